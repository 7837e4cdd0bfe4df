"""Small image files and bytes for the tests: random, solid-coloured or noisy-coloured."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from support.keywords import COLORS


def rgb_image(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    """Random pixels."""
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(color: str, size: int = 16) -> bytes:
    """A solid square of a palette colour, as PNG bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLORS[color]).save(buffer, format="PNG")
    return buffer.getvalue()


def color_png(path: Path, color: str, size: int = 16) -> Path:
    """A solid square of a palette colour written to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLORS[color]).save(path)
    return path


def write_image(path: Path, color: str, seed: int) -> None:
    """A 16 px PNG of a palette colour with a little seeded noise (each image its own vector)."""
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[color], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 8, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
