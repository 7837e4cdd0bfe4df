"""Fixtures for the indexes tests: a one-thread FAISS, Milvus Lite and a Milvus server (helpers in idx_helpers.py,
milvus_support.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import pytest
from milvus_support import MilvusTestServer, location_factory


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    """Multi-threaded FAISS only slows small tests down on a shared machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def lite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Milvus Lite database for the whole run (its server process starts once); tests use their own names."""
    pytest.importorskip("pymilvus", reason="the distributed extra (pymilvus) is not installed")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed")
    return tmp_path_factory.mktemp("milvus-lite") / "tests.db"


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer]:
    """One real Milvus standalone server per run (slow suite), stopped at the end; skipped when it cannot run."""
    pytest.importorskip("pymilvus", reason="the distributed extra (pymilvus) is not installed")
    pytest.importorskip("milvus", reason="the milvus package (embedded standalone server) is not installed")
    server = MilvusTestServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except Exception as exc:  # no binary for this platform, ports refused, too little memory...
        server.stop()
        pytest.skip(f"cannot start a Milvus standalone server on this machine: {exc}")
    yield server
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)  # the server's binaries and data: about 0.5 GB


@pytest.fixture
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``location(hint)`` -> a fresh collection location on the backend named by the (indirect) parameter."""
    return location_factory(request, request.param, tmp_path)
