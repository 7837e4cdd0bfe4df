"""Hard negatives from an index: each query's nearest items in the current space, its positives left out.

:func:`hard_negatives` builds a temporary :class:`indexes.Collection` of the item vectors
(exact ``"Flat"`` by default, ``"auto"`` for large sets), searches it with the query vectors
and drops every item listed as a positive of that query. What counts as a positive is the
caller's business; :func:`caption_positives` and :func:`image_positives` give the usual
ones for image-caption pairs: an image and the captions of the same image, and also any
exact duplicate of a caption (a false negative if it were contrasted).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["caption_positives", "hard_negatives", "image_positives"]


def _vectors(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"{what} must be a [n, dim] array; received shape {array.shape}")
    return array


def hard_negatives(
    queries: Any, items: Any, positives: Sequence[set[int]], k: int, *, index: str = "Flat"
) -> np.ndarray:
    """``[Q, k]`` int64: for each query row, its ``k`` nearest item rows that are not its positives.

    ``queries [Q, D]`` and ``items [N, D]`` are unit vectors of one space; ``positives[q]`` holds
    the item rows never to return for query ``q``. Rows with fewer than ``k`` candidates are
    padded with ``-1``. The search runs on an :class:`indexes.Collection` in a temporary folder.
    """
    from indexes import Collection

    q, x = _vectors(queries, "queries"), _vectors(items, "items")
    if len(positives) != len(q):
        raise ValueError(
            f"positives has {len(positives)} entries for {len(q)} queries: give one set per query"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; received {k!r}")
    out = np.full((len(q), k), -1, dtype=np.int64)
    if len(q) == 0 or len(x) == 0:
        return out
    wide = min(len(x), k + max((len(p) for p in positives), default=0))
    with (
        tempfile.TemporaryDirectory(prefix="mining-") as tmp,
        Collection.create(f"{tmp}/items", dim=x.shape[1], index=index) as coll,
    ):
        coll.add(x, ids=np.arange(len(x), dtype=np.int64))
        _, found = coll.search(q, wide)  # [Q, wide] item rows, -1 padded
    for row, (near, own) in enumerate(zip(found, positives)):
        kept = [int(i) for i in near if i >= 0 and int(i) not in own][:k]
        out[row, : len(kept)] = kept
    return out


def caption_positives(captions: Sequence[str], text_to_image: Any) -> list[set[int]]:
    """For each caption: its image and every image that has the exact same caption."""
    g = np.asarray(text_to_image, dtype=np.int64)
    by_text: dict[str, set[int]] = defaultdict(set)
    for caption, image in zip(captions, g.tolist()):
        by_text[caption].add(image)
    return [set(by_text[c]) for c in captions]


def image_positives(captions: Sequence[str], text_to_image: Any, n_images: int) -> list[set[int]]:
    """For each image: its captions and every caption equal to one of them."""
    g = np.asarray(text_to_image, dtype=np.int64)
    rows_of_text: dict[str, set[int]] = defaultdict(set)
    for t, caption in enumerate(captions):
        rows_of_text[caption].add(t)
    out: list[set[int]] = [set() for _ in range(n_images)]
    for t, caption in enumerate(captions):
        out[int(g[t])] |= rows_of_text[caption]
    return out
