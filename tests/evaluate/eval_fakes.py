"""A keyword one-hot encoder and a tiny labelled image set for evaluator tests.

The encoder embeds a text as the normalised bag of the known keywords it contains,
and an image as the bag of the keywords in its file name (after decoding it, so
broken files fail like they would with a real model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.data import Pair, PairSet, load_image

COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60)}
OBJECTS = ("car", "dog", "cat", "boat")
VOCAB = (*COLORS, *OBJECTS, "small")


def _bag(words: list[str]) -> torch.Tensor:
    v = torch.tensor([float(w in words) for w in VOCAB]) + 1e-3 * torch.arange(len(VOCAB))  # [D]
    return v / v.norm()


class KeywordEncoder:
    """encode_texts / encode_images / fingerprint over a fixed keyword vocabulary."""

    embed_dim = len(VOCAB)

    def __init__(self) -> None:
        self.calls = {"images": 0, "texts": 0}

    def encode_texts(self, texts, batch_size=256, device=None, progress=False) -> torch.Tensor:
        self.calls["texts"] += 1
        if not texts:
            return torch.zeros(0, self.embed_dim)
        return torch.stack([_bag(t.lower().replace(".", " ").split()) for t in texts])  # [N, D]

    def encode_images(self, images, batch_size=64, device=None, progress=False) -> torch.Tensor:
        self.calls["images"] += 1
        out = []
        for ref in images:
            load_image(ref)  # raises ImageDecodeError for broken files
            out.append(_bag(Path(str(ref)).stem.split("_")))
        return torch.stack(out) if out else torch.zeros(0, self.embed_dim)  # [N, D]

    def fingerprint(self) -> str:
        return hashlib.sha1(",".join(VOCAB).encode()).hexdigest()[:16]


def make_pairs(root: Path, broken: bool = False) -> PairSet:
    """12 images (colour x object), 1-3 captions each, label column ``object``; optionally a broken file."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs = []
    for color, rgb in COLORS.items():
        for obj in OBJECTS:
            path = root / f"{color}_{obj}.png"
            Image.new("RGB", (24, 16), rgb).save(path)
            image_id = f"{color}-{obj}"
            captions = [f"a {color} {obj}", f"a small {obj}", f"the {obj}"][: 1 + int(rng.integers(0, 3))]
            pairs += [Pair(str(path), c, image_id, {"object": obj, "n": i}) for i, c in enumerate(captions)]
    if broken:
        path = root / "red_car_broken.png"
        path.write_bytes(b"not an image")
        pairs.append(Pair(str(path), "a broken red car", "broken", {"object": "car"}))
    return PairSet(pairs)
