"""Test-wide settings: everything offline, every cache in a temporary folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

# Set before any test module imports transformers / matplotlib / ray.
_SANDBOX = tempfile.mkdtemp(prefix="retrieval-tests-")
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_SANDBOX, "hf")
os.environ["MPLCONFIGDIR"] = os.path.join(_SANDBOX, "mpl")
os.environ["MPLBACKEND"] = "Agg"
os.environ["RAY_TMPDIR"] = os.path.join(_SANDBOX, "ray")
os.environ["RETRIEVAL_CACHE"] = os.path.join(_SANDBOX, "cache")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(_SANDBOX, "hypothesis")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster and deterministic


import shutil  # noqa: E402  (the settings above must come first)
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def lite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Milvus Lite database for the whole run (its server process starts once); tests use their own names."""
    pytest.importorskip("pymilvus", reason="the distributed extra (pymilvus) is not installed")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed")
    return tmp_path_factory.mktemp("milvus-lite") / "tests.db"


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Milvus standalone server per run (slow suite), stopped at the end; skipped when it cannot run."""
    pytest.importorskip("pymilvus", reason="the distributed extra (pymilvus) is not installed")
    pytest.importorskip("milvus", reason="the milvus package (embedded standalone server) is not installed")
    from support.milvus import MilvusTestServer

    server = MilvusTestServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except Exception as exc:  # no binary for this platform, ports refused, too little memory...
        server.stop()
        pytest.skip(f"cannot start a Milvus standalone server on this machine: {exc}")
    yield server
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)  # the server's binaries and data: about 0.5 GB
