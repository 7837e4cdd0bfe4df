"""Fixtures for the service tests: a tiny collection of coloured squares and captions, served
with a keyword one-hot encoder (fast, and its answers are predictable)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.config import ServeConfig

from support.corpora import square_collection
from support.keywords import KeywordEncoder


@pytest.fixture
def collection_dir(tmp_path: Path) -> Path:
    return square_collection(tmp_path)


@pytest.fixture
def config(tmp_path: Path, collection_dir: Path) -> ServeConfig:
    return ServeConfig(
        collections={"shapes": str(collection_dir)},
        media_roots={"shapes": str(tmp_path / "media")},
        reload_interval=0.0,
        reload_min_interval=0.0,  # reload on every request (the rate limit has its own test)
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
        max_text_chars=200,
        max_k=20,
        workers=2,
    )


@pytest.fixture
def encoder() -> KeywordEncoder:
    return KeywordEncoder()


@pytest.fixture
def client(config: ServeConfig, encoder: KeywordEncoder):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    app = create_app(config, model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_service(config: ServeConfig, model=None) -> Iterator[str]:
    """The app under uvicorn as ``retrieval serve`` runs it (the guarded protocol, its limits and
    timeouts) on a free loopback port, in a thread; yields its base URL (ending in ``/``)."""
    import threading
    import time

    import uvicorn

    from retrieval.serve import create_app
    from retrieval.serve.server import uvicorn_config

    config = config.replace(port=_free_port())
    server = uvicorn.Server(uvicorn_config(config, create_app(config, model=model), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def serving():
    """:func:`live_service`, for tests to start servers with their own configs."""
    return live_service
