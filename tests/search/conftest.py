"""Fixtures for the search tests: the keyword fake encoder, a collection it embedded, a tiny real model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embed"))

from fake_model import KeywordEncoder, write_corpus

from retrieval.config import EmbedConfig
from retrieval.embed import embed_corpus


@pytest.fixture(scope="module")
def fake_model() -> KeywordEncoder:
    return KeywordEncoder()


@pytest.fixture(scope="module")
def corpus_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "images", 32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, fake_model, corpus_rows) -> Path:
    """32 images and their 32 captions embedded by the fake encoder into a Flat collection."""
    root = tmp_path_factory.mktemp("coll")
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    config = EmbedConfig(batch_size=8, num_workers=0, progress=False, index="Flat")
    embed_corpus(fake_model, manifest, root / "coll", config)
    return root / "coll"


TINY = dict(
    image_tower="cnn",
    text_tower="gru",
    embed_dim=32,
    image_size=32,
    image_width=8,
    image_layers=2,
    text_width=16,
    text_layers=1,
    vocab_size=300,
    context_length=16,
)


@pytest.fixture(scope="module")
def tiny_config():
    from retrieval.config import ModelConfig

    return ModelConfig(**TINY)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, corpus_rows, tiny_config) -> Path:
    """A tiny random TwinEncoder saved to disk."""
    import torch

    from retrieval.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config, captions=[r["caption"] for r in corpus_rows], device="cpu")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save(folder)
    return folder
