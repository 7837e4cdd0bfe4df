"""Small images (good and broken) written to tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def rgb_image(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three good images (a.jpg, b.png, sub/c.jpg) under tmp_path/images."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rgb_image(seed=1).save(root / "a.jpg")
    rgb_image(seed=2).save(root / "b.png")
    rgb_image(seed=3).save(root / "sub" / "c.jpg")
    return root
