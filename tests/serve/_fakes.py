"""Cheap stand-ins for the service tests: a keyword one-hot encoder and tiny image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}
KEYWORDS = [*COLORS, "cat", "dog", "car", "tree"]
DIM = len(KEYWORDS)


def keyword_vector(text: str) -> np.ndarray:
    """One-hot over the keywords a text mentions, unit norm; a uniform vector when none."""
    words = text.lower().split()
    vec = np.array([1.0 if kw in words else 0.0 for kw in KEYWORDS], dtype=np.float64)
    if not vec.any():
        vec[:] = 1.0
    return (vec / np.linalg.norm(vec)).astype(np.float32)


class KeywordEncoder:
    """Texts -> one-hot keywords; images -> the one-hot of their nearest named colour."""

    embed_dim = len(KEYWORDS)

    def __init__(self) -> None:
        self.calls = 0

    def encode_texts(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.calls += 1
        return np.stack([keyword_vector(t) for t in texts])  # [N, D]

    def encode_images(self, images: Sequence[Any], **kwargs: Any) -> np.ndarray:
        self.calls += 1
        rows = []
        for image in images:
            mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            name = min(COLORS, key=lambda c: float(np.sum((np.asarray(COLORS[c]) - mean) ** 2)))
            rows.append(keyword_vector(name))
        return np.stack(rows)  # [N, D]

    def fingerprint(self) -> str:
        return "keyword-onehot-v1"


def color_png(path: Path, color: str, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLORS[color]).save(path)
    return path


def png_bytes(color: str, size: int = 16) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLORS[color]).save(buf, format="PNG")
    return buf.getvalue()
