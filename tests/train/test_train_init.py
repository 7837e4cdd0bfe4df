"""Fine-tuning a pretrained CLIP / SigLIP checkpoint: ``init_model`` (``retrieval train --init``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.cli import main
from retrieval.config import ModelConfig, TrainConfig
from retrieval.model import load_model
from retrieval.train import train
from retrieval.train.setup import initial_model

from support.hf import save_tiny_clip, save_tiny_siglip

COLORS = ("red", "green", "blue", "yellow")  # the words of the shapes data set (conftest.py)
SHAPES = ("circle", "square", "triangle", "cross")
CAPTIONS = [f"a {c} {s}" for c in COLORS for s in SHAPES] + [f"{s} in {c}" for c in COLORS for s in SHAPES]
# every tower trains (the default recipe locks the text tower)
UNLOCKED = ModelConfig(lock_text=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), texts=CAPTIONS)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip"), texts=CAPTIONS)


def _init_config(config: TrainConfig, init: Path, **changes) -> TrainConfig:
    return config.replace(init_model=str(init), model=UNLOCKED, lr=1e-3, max_steps=3, **changes)


def _transformers_embeddings(path: Path, images: list[Image.Image], texts: list[str], padding):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    tokens = AutoTokenizer.from_pretrained(path)(
        texts,
        padding=padding,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    pixels = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(**pixels).pooler_output
        text = model.get_text_features(**tokens).pooler_output
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_fine_tuning_starts_at_transformers_and_moves(which, request, config, dataset, tmp_path):
    path = request.getfixturevalue(f"{which}_dir")
    run = _init_config(config, path, loss=which, val_data=None)
    images = [Image.open(p).convert("RGB") for p in sorted(dataset["train"].parent.glob("train-*-0.png"))[:4]]
    texts = CAPTIONS[:5]

    start = initial_model(run, "cpu")  # what train() starts from, before any step
    want_images, want_texts = _transformers_embeddings(
        path, images, texts, "max_length" if which == "siglip" else True
    )
    assert torch.allclose(start.encode_images(images), want_images, atol=1e-5)
    assert torch.allclose(start.encode_texts(texts), want_texts, atol=1e-5)
    before = {k: v.clone() for k, v in start.state_dict().items()}

    result = train(run)
    assert result.steps == 3
    tuned = load_model(result.model_dir, device="cpu")
    assert tuned.source is not None and tuned.source.kind == "toolkit"
    after = tuned.state_dict()
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)  # projections keep their shapes
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("image_tower" in k for k in moved) and any("text_tower" in k for k in moved)
    assert tuned.logit_scale.item() != pytest.approx(start.logit_scale.item(), abs=0.0)
    assert tuned.base_model is not None and tuned.base_model["path"] == str(path.resolve())
    assert json.loads((Path(run.out_dir) / "config.json").read_text())["init_model"] == str(path)


def test_lock_and_partial_unfreeze_apply_to_the_pretrained_towers(clip_dir, config):
    run = config.replace(init_model=str(clip_dir), model=ModelConfig(lock_text=True, unfreeze_image_layers=1))
    model = initial_model(run, "cpu")
    assert not any(p.requires_grad for p in model.text_tower.parameters())
    blocks = model.image_tower.blocks()
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert model.text_tower.has_projection and model.text_tower.projection.weight.shape == (24, 32)


def test_architecture_settings_with_init_are_refused(clip_dir, config):
    run = config.replace(init_model=str(clip_dir), model=ModelConfig(embed_dim=64))
    with pytest.raises(ValueError, match=r"fixes the architecture, so model\.embed_dim=64 cannot apply"):
        train(run)


def test_cli_init_validates_and_resumes(clip_dir, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", str(dataset["train"]), "model.lock_text=false", "batch_size=8", "device=cpu", "epochs=1",
            "checkpoint_every=1", "--init", str(clip_dir), "--out", str(out), "--val", str(dataset["val"]),
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--set", "max_steps=1"]) == 0
    assert main([*argv, "--set", "max_steps=2", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 2 steps" in printed and str(out / "best") in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") == "train"] == [1, 2]
    assert any(r.get("kind") == "val" for r in records)
    assert load_model(out / "best", device="cpu").embed_dim == 24
