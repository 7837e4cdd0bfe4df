"""Real Milvus for the tests: a Milvus Lite database per run, and one standalone server for the slow suite
(the fixtures `lite_db` and `milvus_server` are in tests/conftest.py).

The server is the PyPI ``milvus`` package (an embedded Milvus standalone); it starts on
127.0.0.1 on a free port with its own base folder under the test's temporary folder. A
restart may land on another port (the package re-probes its ports), so callers read
:attr:`MilvusTestServer.uri` after each start.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_counter = itertools.count()


def unique_name(hint: str) -> str:
    """A Milvus collection name unique within this test run."""
    return f"t{next(_counter):04d}_{re.sub(r'[^A-Za-z0-9_]', '_', hint)[:40]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusTestServer:
    """One Milvus standalone process; start/stop it (e.g. to test an outage in the middle of an ingest)."""

    def __init__(self, base: Path) -> None:
        from milvus import MilvusServer

        self.base = base
        self._server: Any = MilvusServer()
        self._server.set_base_dir(str(base))
        self._server.listen_port = free_port()

    @property
    def uri(self) -> str:
        return f"milvus://127.0.0.1:{self._server.listen_port}"

    def location(self, name: str, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"{self.uri}/{name}" + (f"?{query}" if query else "")

    def start(self) -> float:
        t0 = time.perf_counter()
        self._server.start()
        return time.perf_counter() - t0

    def stop(self) -> None:
        self._server.stop()

    @property
    def running(self) -> bool:
        return bool(self._server.running)


def backends() -> list[Any]:
    """The contract tests' backends: the local folder and Milvus Lite by default, a real server in the slow suite."""
    import pytest

    return ["local", "milvus-lite", pytest.param("milvus-server", marks=pytest.mark.slow)]


def location_factory(request: Any, backend: str, folder: Path) -> Callable[[str], str]:
    """``make(hint)`` -> a fresh collection location on ``backend`` (local folders go under ``folder``)."""
    if backend == "local":
        return lambda hint: str(folder / unique_name(hint))
    if backend == "milvus-lite":
        db = request.getfixturevalue("lite_db")
        return lambda hint: f"milvus-lite://{db}/{unique_name(hint)}"
    server = request.getfixturevalue("milvus_server")
    return lambda hint: server.location(unique_name(hint))
