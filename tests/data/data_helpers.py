"""Image helpers for the data tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def rgb_image(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
