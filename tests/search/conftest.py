"""Fixtures for the search tests: the keyword fake encoder, a collection it embedded, a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.config import EmbedConfig
from retrieval.embed import embed_corpus

from support.corpora import write_corpus
from support.keywords import KeywordEncoder
from support.tiny import CNN_GRU


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




@pytest.fixture(scope="module")
def tiny_config():
    return CNN_GRU


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
