"""Fixtures for the service tests: a tiny collection of coloured squares and captions, served
with a keyword one-hot encoder (fast, and its answers are predictable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.config import ServeConfig

from ._fakes import COLORS, KeywordEncoder, color_png, keyword_vector

ANIMALS = ["cat", "dog", "car", "tree"]


def build_collection(root: Path, name: str = "shapes", fingerprint: str | None = "keyword-onehot-v1") -> Path:
    """16 image items (4 colours x 4 sizes, PNGs under root/media) + 8 text items."""
    from indexes import Collection

    media = root / "media"
    path = root / name
    vectors, metadata = [], []
    for color in COLORS:
        for size in range(4):
            file = color_png(media / color / f"{color}-{size}.png", color, 8 + 4 * size)
            vectors.append(keyword_vector(color))
            metadata.append(
                {
                    "modality": "image",
                    "path": str(file),
                    "caption": f"a {color} square",
                    "color": color,
                    "size": size,
                }
            )
    for word in [*COLORS, *ANIMALS]:
        vectors.append(keyword_vector(word))
        metadata.append({"modality": "text", "caption": f"the word {word}", "color": word, "size": -1})
    with Collection.create(path, dim=len(vectors[0]), index="Flat", fingerprint=fingerprint) as coll:
        coll.add(np.stack(vectors), metadata)
    return path


@pytest.fixture
def collection_dir(tmp_path: Path) -> Path:
    return build_collection(tmp_path)


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
    with TestClient(app) as c:
        yield c
