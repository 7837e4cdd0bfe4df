"""A tiny corpus, a tiny saved model and the collection `retrieval embed` made of them, for the
command-line tests (built once per module)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.corpora import write_corpus
from support.fixtures import one_torch_thread  # noqa: F401  (autouse)
from support.tiny import CNN_GRU


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("corpus")
    rows = write_corpus(root / "images", 16)
    manifest = root / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest, rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus) -> Path:
    import torch

    from retrieval.model import build_model

    torch.manual_seed(0)
    model = build_model(CNN_GRU, captions=[r["caption"] for r in corpus[1]], device="cpu")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def collection(tmp_path_factory, corpus, model_dir) -> Path:
    from retrieval.cli import main

    out = tmp_path_factory.mktemp("coll") / "coll"
    # options first, the positional last: any order parses
    argv = ["embed", "--out", str(out), "--model", str(model_dir), "--index", "Flat", "--no-progress", "-q"]
    assert main([*argv, "--workers", "0", str(corpus[0])]) == 0
    return out


@pytest.fixture
def train_config(tmp_path) -> Path:
    """A TrainConfig JSON for a run of one step on the tiny model."""
    path = tmp_path / "base.json"
    config = {"model": CNN_GRU.to_dict(), "batch_size": 8, "device": "cpu", "val_fraction": 0.0}
    path.write_text(json.dumps({**config, "hard_negatives": False, "checkpoint_every": 0}))
    return path
