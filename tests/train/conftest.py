"""Tiny image-caption datasets and model settings for the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from retrieval.config import ModelConfig, TrainConfig

from support.fixtures import one_torch_thread  # noqa: F401  (an autouse fixture for this folder)

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")

TINY_MODEL = ModelConfig(
    image_tower="cnn",
    text_tower="gru",
    embed_dim=16,
    image_size=16,
    image_width=4,
    image_layers=1,
    text_width=8,
    text_layers=1,
    vocab_size=120,
    context_length=8,
    lock_text=False,  # every tower trains unless a test locks one
)


def _draw(shape: str, color: tuple[int, int, int], size: int = 24) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (4, 4, size - 4, size - 4)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(size // 2, 3), (3, size - 3), (size - 3, size - 3)], fill=color)
    else:
        draw.rectangle((size // 2 - 3, 3, size // 2 + 3, size - 3), fill=color)
        draw.rectangle((3, size // 2 - 3, size - 3, size // 2 + 3), fill=color)
    return image


def write_pairs(root: Path, name: str, variants: int, *, weights: bool = False) -> Path:
    """A JSONL manifest of coloured shapes; each image has one or two captions."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in range(variants):
        for cname, rgb in COLORS.items():
            for shape in SHAPES:
                shade = tuple(max(0, c - 25 * v) for c in rgb)
                file = f"{name}-{cname}-{shape}-{v}.png"
                _draw(shape, shade).save(root / file)
                captions = [f"a {cname} {shape}"] + (
                    [f"{shape} in {cname}"] if v == 0 and shape == "circle" else []
                )
                for caption in captions:
                    row = {"image": file, "caption": caption, "color": cname}
                    if weights:
                        row["weight"] = 3.0 if cname == "red" else 1.0
                    rows.append(row)
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {"train": write_pairs(root, "train", 2, weights=True), "val": write_pairs(root, "val", 1)}


@pytest.fixture
def tiny_model() -> ModelConfig:
    return TINY_MODEL


@pytest.fixture
def config(dataset, tmp_path) -> TrainConfig:
    """A run that takes about a second on a busy CPU: 36 pairs, batch 8, 2 epochs."""
    return TrainConfig(
        train_data=str(dataset["train"]),
        val_data=str(dataset["val"]),
        out_dir=str(tmp_path / "run"),
        model=TINY_MODEL,
        lr=5e-3,
        warmup_steps=2,
        epochs=2,
        batch_size=8,
        checkpoint_every=3,
        device="cpu",
        progress=False,
        val_batch_size=16,
    )
