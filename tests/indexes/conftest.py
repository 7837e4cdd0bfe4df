"""Fixtures for the indexes tests: a one-thread FAISS (the helpers live in idx_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    """Multi-threaded FAISS only slows small tests down on a shared machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
