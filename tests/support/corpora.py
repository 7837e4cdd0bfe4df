"""Manifests, pair sets and a collection made of the support images and keyword vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.data import Pair, PairSet

from support.images import color_png, write_image
from support.keywords import COLORS, OBJECTS, SQUARES, KeywordEncoder, keyword_vector


def write_corpus(folder: Path, n: int, start: int = 0) -> list[dict]:
    """``n`` noisy colour images ``img_<i>.png`` in ``folder``, one caption each ("a <colour>
    <object>"), every fourth in the test split; returns the manifest rows."""
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


LABELLED_COLORS = ("red", "blue", "green")
LABELLED_OBJECTS = ("car", "dog", "cat", "boat")


def make_pairs(root: Path, broken: bool = False) -> PairSet:
    """12 images named ``<colour>_<object>.png`` (for :class:`support.keywords.FileNameEncoder`),
    1-3 captions each, the label column ``object``; optionally a broken file with one caption."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs = []
    for color in LABELLED_COLORS:
        for obj in LABELLED_OBJECTS:
            path = root / f"{color}_{obj}.png"
            Image.new("RGB", (24, 16), COLORS[color]).save(path)
            image_id = f"{color}-{obj}"
            captions = [f"a {color} {obj}", f"a small {obj}", f"the {obj}"][: 1 + int(rng.integers(0, 3))]
            pairs += [Pair(str(path), c, image_id, {"object": obj, "n": i}) for i, c in enumerate(captions)]
    if broken:
        path = root / "red_car_broken.png"
        path.write_bytes(b"not an image")
        pairs.append(Pair(str(path), "a broken red car", "broken", {"object": "car"}))
    return PairSet(pairs)


ANIMALS = ["cat", "dog", "car", "tree"]


def square_collection(
    root: Path, name: str = "shapes", fingerprint: str | None = KeywordEncoder().fingerprint()
) -> Path:
    """A Flat collection ``root/name`` embedded as :class:`KeywordEncoder` would: 16 image items
    (4 colours x 4 sizes, PNGs under ``root/media``) and 8 text items ("the word <w>")."""
    from indexes import Collection

    media = root / "media"
    path = root / name
    vectors, metadata = [], []
    for color in SQUARES:
        for size in range(4):
            file = color_png(media / color / f"{color}-{size}.png", color, 8 + 4 * size)
            vectors.append(keyword_vector(color))
            metadata.append(
                {
                    "modality": "image",
                    "path": str(file),
                    "caption": f"a {color} square",
                    "color": color,
                    "size": size,
                }
            )
    for word in [*SQUARES, *ANIMALS]:
        vectors.append(keyword_vector(word))
        metadata.append({"modality": "text", "caption": f"the word {word}", "color": word, "size": -1})
    with Collection.create(path, dim=len(vectors[0]), index="Flat", fingerprint=fingerprint) as coll:
        coll.add(np.stack(vectors), metadata)
    return path
