"""Tiny pretrained checkpoints and models fine-tuned from them (the ``--init`` path), shared by the export tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from support.finetune import fine_tune
from support.fixtures import one_torch_thread  # noqa: F401  (an autouse fixture for this folder)
from support.hf import save_tiny_clip, save_tiny_siglip

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square")
CAPTIONS = [f"a {c} {s}" for c in COLORS for s in SHAPES]


def write_pairs(root: Path) -> Path:
    """A JSONL manifest of six coloured shapes, one caption each."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, rgb in COLORS.items():
        for shape in SHAPES:
            image = Image.new("RGB", (24, 24), "white")
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)((4, 4, 20, 20), fill=rgb)
            file = f"{name}-{shape}.png"
            image.save(root / file)
            rows.append({"image": file, "caption": f"a {name} {shape}"})
    manifest = root / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


@pytest.fixture(scope="session")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), texts=CAPTIONS)


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip"), texts=CAPTIONS)


@pytest.fixture(scope="session")
def tuned_clip(clip_dir: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tune(clip_dir, pairs, tmp_path_factory.mktemp("run") / "clip", "clip") / "final"


@pytest.fixture(scope="session")
def tuned_siglip(siglip_dir: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tune(siglip_dir, pairs, tmp_path_factory.mktemp("run") / "siglip", "siglip") / "final"
