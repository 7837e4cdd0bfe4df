"""A keyword one-hot encoder standing in for a trained twin encoder.

Texts map to the normalised sum of one-hot vectors of the colour and object words they
contain; images map to the one-hot vector of their dominant colour plus a small
brightness component, so every image gets its own vector but matches its colour word.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

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
WORDS = [*COLORS, "dog", "cat", "car", "tree", "sky", "house", "boat", "bird"]
DIM = len(WORDS) + 1  # one spare dimension keeps every vector non-zero


class KeywordEncoder:
    """encode_texts / image_transform / image_features / encode_images / fingerprint / embed_dim."""

    embed_dim = DIM

    def __init__(self, salt: str = "", delay: float = 0.0) -> None:
        self.salt = salt
        self.delay = delay  # seconds slept per forward batch (to interrupt runs mid-way)

    def fingerprint(self) -> str:
        return f"keyword-onehot-{DIM}{self.salt}"

    def image_transform(self, train: bool = False):
        return _to_tensor

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        mean = pixel_values.mean(dim=(2, 3))  # [B, 3]
        palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255.0  # [C, 3]
        nearest = torch.cdist(mean, palette).argmin(dim=1)  # [B]
        out = torch.zeros(len(mean), DIM)  # [B, D]
        out[torch.arange(len(mean)), nearest] = 1.0
        out[:, -1] = 0.05 + 0.2 * pixel_values.std(dim=(1, 2, 3))  # per-image detail
        return torch.nn.functional.normalize(out, dim=1)

    def encode_images(
        self, images, batch_size: int = 64, device=None, progress: bool = False
    ) -> torch.Tensor:
        pixels = torch.stack(
            [_to_tensor(im if isinstance(im, Image.Image) else Image.open(im)) for im in images]
        )
        return self.image_features(pixels)

    def encode_texts(self, texts, batch_size: int = 256, device=None, progress: bool = False) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        out = torch.zeros(len(texts), DIM)  # [B, D]
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                if word in WORDS:
                    out[i, WORDS.index(word)] += 1.0
        out[:, -1] = 0.05
        return torch.nn.functional.normalize(out, dim=1)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, H, W]


def write_image(path, color: str, seed: int) -> None:
    """A small PNG of ``color`` with a little seeded noise."""
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[color], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 8, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


OBJECTS = ["dog", "cat", "car", "tree", "sky", "house", "boat", "bird"]


def write_corpus(folder, n: int, start: int = 0) -> list[dict]:
    """``n`` images ``img_<i>.png`` in ``folder`` with one caption each; returns manifest rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    names = list(COLORS)
    for i in range(start, start + n):
        color, obj = names[i % len(names)], OBJECTS[(i // len(names)) % len(OBJECTS)]
        path = folder / f"img_{i:05d}.png"
        write_image(path, color, seed=i)
        rows.append(
            {
                "image": str(path),
                "caption": f"a {color} {obj}",
                "image_id": f"img_{i:05d}",
                "split": "train" if i % 4 else "test",
            }
        )
    return rows
