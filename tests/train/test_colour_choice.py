"""The colour histogram is built for training images with colour and left out for greyscale ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from retrieval.config import ModelConfig, TrainConfig
from retrieval.model import TwinEncoder
from retrieval.train import train
from retrieval.train.colour import coloured_share, model_config_for_images

from support.tiny import LITE as PLAIN_LITE

LITE = PLAIN_LITE.replace(colour_levels=3)


def _glyphs(root: Path, name: str, mode: str) -> Path:
    """A manifest of black glyphs on white (or on transparency), as icon sets are drawn."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, word in enumerate(["bar", "box", "dot", "ring", "slash", "plus", "hash", "wave"]):
        image = Image.new(
            "RGBA" if mode == "RGBA" else "L", (24, 24), (0, 0, 0, 0) if mode == "RGBA" else 255
        )
        draw = ImageDraw.Draw(image)
        ink = (0, 0, 0, 255) if mode == "RGBA" else 0
        draw.rectangle((3 + i, 3, 12 + i, 20 - i), outline=ink, width=2)
        draw.line((2, 2 + 2 * i, 21, 21 - i), fill=ink, width=1)
        image.save(root / f"{name}-{word}.png")
        rows.append({"image": f"{name}-{word}.png", "caption": f"a {word} icon"})
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def _images(manifest: Path) -> list[str]:
    return [str(manifest.parent / json.loads(line)["image"]) for line in manifest.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_greyscale_images_have_no_coloured_pixels(mode, tmp_path):
    share, read = coloured_share(_images(_glyphs(tmp_path, "g", mode)))
    assert (share, read) == (0.0, 8)


def test_coloured_shapes_count_their_coloured_pixels(dataset):
    images = sorted(set(_images(dataset["train"])))  # a manifest row per caption: images repeat
    share, read = coloured_share(images)
    assert read == len(images) and 0.3 < share < 0.9  # a shape on white: most of the image


def test_the_sample_is_spread_over_the_set_and_skips_unreadable_images(dataset, tmp_path):
    grey = _images(_glyphs(tmp_path / "g", "g", "L"))
    coloured = _images(dataset["train"])
    share, read = coloured_share([*grey, *coloured], sample=8)
    assert read == 8 and share > 0  # evenly spread: the coloured half is sampled too
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert coloured_share([str(broken), str(tmp_path / "missing.png")]) == (0.0, 0)


def test_only_greyscale_training_images_drop_the_histogram(dataset, tmp_path, caplog):
    grey = _images(_glyphs(tmp_path / "g", "g", "L"))
    coloured = _images(dataset["train"])
    with caplog.at_level(logging.INFO, logger="retrieval.train.colour"):
        assert model_config_for_images(LITE, grey).colour_levels == 0
    assert "greyscale" in caplog.text and "model.colour_levels=0" in caplog.text
    assert model_config_for_images(LITE, coloured) is LITE
    unreadable = [str(tmp_path / "missing.png")]
    assert model_config_for_images(LITE, unreadable) is LITE  # nothing to judge by: as asked
    # no histogram asked for, or a tower without one: the images are not even read
    assert model_config_for_images(LITE.replace(colour_levels=0), unreadable).colour_levels == 0
    cnn = ModelConfig(image_tower="cnn", colour_levels=6)
    assert model_config_for_images(cnn, unreadable) is cnn


@pytest.mark.parametrize("kind", ["greyscale", "coloured"])
def test_a_run_builds_the_tower_the_training_images_call_for(kind, dataset, tmp_path):
    if kind == "greyscale":
        train_data, val_data = _glyphs(tmp_path / "d", "train", "L"), _glyphs(tmp_path / "d", "val", "RGBA")
    else:  # the trainer tests' coloured shapes
        train_data, val_data = dataset["train"], dataset["val"]
    config = TrainConfig(
        train_data=str(train_data),
        val_data=str(val_data),
        out_dir=str(tmp_path / "run"),
        model=LITE,
        batch_size=8,
        epochs=1,
        adapt_epochs=1,
        hard_negatives=False,
        checkpoint_every=0,
        progress=False,
        runtime="torch",
        feature_cache=False,
        device="cpu",
    )
    result = train(config)
    model = TwinEncoder.load(result.model_dir, device="cpu")
    want = 0 if kind == "greyscale" else 3
    assert model.config.colour_levels == want
    assert model.image_tower.output_dim == 3184 + want**3
    assert (
        TrainConfig.load(Path(result.run_dir) / "config.json").model.colour_levels == 3
    )  # as the user asked
