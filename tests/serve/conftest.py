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


@pytest.fixture(scope="session")
def hubness_setup(tmp_path_factory) -> tuple[Path, Path, ServeConfig]:
    """A tiny real model saved to disk, 32 noisy coloured images and their captions embedded into a
    collection, and a query bank beside it: ``(model dir, collection, ServeConfig served with
    hubness correction)``."""
    import json

    import torch

    from retrieval.config import EmbedConfig
    from retrieval.data import read_pairs
    from retrieval.embed import embed_corpus
    from retrieval.model import build_model
    from retrieval.search import build_query_bank, query_bank_path

    from support.corpora import write_corpus
    from support.tiny import CNN_GRU

    root = tmp_path_factory.mktemp("hubness")
    rows = write_corpus(root / "images", 32)
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    model = build_model(CNN_GRU, captions=[r["caption"] for r in rows], device="cpu").eval()
    model.save(root / "model")
    coll = root / "coll"
    embed_corpus(
        model, manifest, coll, EmbedConfig(batch_size=16, num_workers=0, progress=False, index="Flat")
    )
    build_query_bank(model, read_pairs(manifest), max_queries=32).save(query_bank_path(coll))
    config = ServeConfig(
        collections={"tiny": str(coll)},
        model=str(root / "model"),
        media_roots={"tiny": str(root / "images")},
        hubness="isoftmax",
        reload_interval=0,
    )
    return root / "model", coll, config
