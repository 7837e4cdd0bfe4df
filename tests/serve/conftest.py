"""Fixtures for the service tests: a tiny collection of coloured squares and captions, served
with a keyword one-hot encoder (fast, and its answers are predictable)."""

from __future__ import annotations

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
