"""Keyword encoders standing in for trained twin encoders: fast, and their answers are predictable.

A text maps to the bag of the known words it contains (:func:`keyword_vector`; a text without any
maps to the uniform vector), an image to the one-hot vector of its nearest palette colour plus a
small per-image detail (the spread of its pixels) in one spare dimension: a solid square maps
exactly to its colour word, while noisy images of one colour still differ.

* :class:`KeywordEncoder` offers what :mod:`retrieval.encoding` uses (``image_transform``,
  ``image_features``, ``tokenize``, ``text_features``) and plain ``encode_images`` /
  ``encode_texts`` references, so it stands in for a ``TwinEncoder`` everywhere.
* :class:`FileNameEncoder` is a black box (only ``encode_images`` / ``encode_texts``) that maps an
  image to the known words of its file name, after decoding it so broken files fail as they would
  with a real model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from retrieval.data import load_image

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
    "purple": (150, 30, 160),
    "cyan": (30, 210, 210),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
OBJECTS = ["dog", "cat", "car", "tree", "sky", "house", "boat", "bird"]
SQUARES = ["red", "green", "blue", "yellow"]  # the colours of the service tests' squares
WORDS = [*COLORS, *OBJECTS]
DIM = len(WORDS) + 1  # the spare last dimension carries an image's detail
DETAIL = 2.0  # weight of an image's pixel spread in the spare dimension


def keyword_vector(text: str) -> np.ndarray:
    """``[DIM]`` float32 unit vector: counts of the known words in ``text``, uniform when none."""
    words = re.findall(r"[a-z]+", text.lower())
    vec = np.zeros(DIM, dtype=np.float64)
    for word in words:
        if word in WORDS:
            vec[WORDS.index(word)] += 1.0
    if not vec.any():
        vec[: len(WORDS)] = 1.0
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def _pixels(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, H, W]


def _decoded(image: Any) -> Image.Image:
    return image if isinstance(image, Image.Image) else load_image(image)


class KeywordEncoder:
    """A keyword one-hot model with the interface of a ``TwinEncoder``; ``salt`` changes its
    fingerprint, ``delay`` (seconds) slows every forward batch (to interrupt runs mid-way)."""

    embed_dim = DIM

    def __init__(self, salt: str = "", delay: float = 0.0) -> None:
        self.salt = salt
        self.delay = delay
        self.calls = 0  # forward batches run

    def fingerprint(self) -> str:
        return f"keyword-onehot-{DIM}{self.salt}"

    # -- what retrieval.encoding uses
    def image_transform(self, train: bool = False):
        return _pixels

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, DIM]``: nearest palette colour, plus the detail dimension."""
        self._forward()
        mean = pixel_values.mean(dim=(2, 3))  # [B, 3]
        palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255.0  # [C, 3]
        nearest = torch.cdist(mean, palette).argmin(dim=1)  # [B]
        out = torch.zeros(len(mean), DIM)  # [B, D]
        out[torch.arange(len(mean)), nearest] = 1.0
        out[:, -1] = DETAIL * pixel_values.std(dim=(1, 2, 3))  # 0 for a solid colour
        return torch.nn.functional.normalize(out, dim=1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"bags": torch.from_numpy(np.stack([keyword_vector(t) for t in texts]))}  # [B, D]

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        self._forward()
        return tokens["bags"]  # [B, D]

    # -- plain references (what a test compares the encoding path against)
    def encode_images(self, images: Sequence[Any], **kwargs: Any) -> torch.Tensor:
        if not len(images):
            return torch.zeros(0, DIM)
        return self.image_features(torch.stack([_pixels(_decoded(im)) for im in images]))  # [N, D]

    def encode_texts(self, texts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        if not len(texts):
            return torch.zeros(0, DIM)
        return self.text_features(self.tokenize(list(texts)))  # [N, D]

    def _forward(self) -> None:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)


class FileNameEncoder:
    """A black-box keyword encoder: an image is the bag of the known words of its file name
    (``red_car.png`` -> red + car), a text the bag of its known words."""

    embed_dim = DIM

    def fingerprint(self) -> str:
        return f"keyword-file-name-{DIM}"

    def encode_images(self, images: Sequence[Any], **kwargs: Any) -> torch.Tensor:
        rows = []
        for ref in images:
            load_image(ref)  # raises ImageDecodeError for a broken file
            rows.append(keyword_vector(" ".join(Path(str(ref)).stem.split("_"))))
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, DIM)  # [N, D]

    def encode_texts(self, texts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        rows = [keyword_vector(t) for t in texts]
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, DIM)  # [N, D]
