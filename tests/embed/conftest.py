"""Fixtures for the embedding tests: a keyword one-hot fake encoder and a tiny image corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.config import EmbedConfig

from support.corpora import write_corpus
from support.keywords import KeywordEncoder


@pytest.fixture
def fake_model() -> KeywordEncoder:
    return KeywordEncoder()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A JSONL manifest of 20 coloured images with one caption each."""
    rows = write_corpus(tmp_path / "images", 20)
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture
def config() -> EmbedConfig:
    return EmbedConfig(batch_size=4, num_workers=0, shard_size=8, progress=False, index="Flat")
