"""Fixtures for the indexes tests: a one-thread FAISS and the contract tests' locations (Milvus Lite and the
Milvus server fixtures are test-wide, in tests/conftest.py; helpers in idx_helpers.py, support/milvus.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import pytest
from milvus_support import location_factory


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    """Multi-threaded FAISS only slows small tests down on a shared machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``location(hint)`` -> a fresh collection location on the backend named by the (indirect) parameter."""
    return location_factory(request, request.param, tmp_path)
