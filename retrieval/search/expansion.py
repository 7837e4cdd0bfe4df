"""Cross-modal query expansion through a paired query bank.

A text query looking for images is moved towards the images of the bank captions nearest to it;
an image query looking for captions, towards the captions of the nearest bank images. With the
bank built from the training pairs, a query about something the model places poorly borrows where
the model put the training items that read (or look) like it:

    q' = normalise(q + weight * sum_j w_j v_j),  w = softmax(s(q, k_j) / temperature) over the
    ``k`` bank keys ``k_j`` most similar to ``q``, ``v_j`` the partner of ``k_j``.

The expanded query is one vector: any index answers it, at the cost of one bank lookup per query
(the bank is a few thousand rows). It is the average query expansion of Chum et al. 2007 ("Total
recall"), taken across modalities with a key-value cache of training pairs as in Tip-Adapter
(Zhang et al. 2022, "Tip-Adapter: training-free adaption of CLIP"). Keys and values come from a
:class:`~retrieval.search.hubness.QueryBank` that records which caption belongs to which image
(``pairs``); :func:`~retrieval.search.hubness.build_query_bank` and the demo build such banks.

Example::

    bank = build_query_bank(model, train_pairs)
    expanded = expand_queries(text_vectors, bank, "text", Expansion())  # then search images with it
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from retrieval.search.hubness import QueryBank

__all__ = ["Expansion", "expand_queries", "expand_with", "expansion_pairs"]

OTHER_MODALITY = {"text": "image", "image": "text"}  # what a cross-modal query of each modality searches


@dataclasses.dataclass(frozen=True)
class Expansion:
    """How far a cross-modal query moves towards the partners of its bank neighbours.

    The defaults were measured on the validation splits of the OpenMoji and icon sets
    (``benchmarks/bench_expansion.py``): 10 neighbours, half a unit query's weight, temperature 0.05.
    """

    k: int = 10  # bank neighbours of the query whose partners are added
    weight: float = 0.5  # weight of the partners' average beside the query (0: no change)
    temperature: float = 0.05  # softmax temperature over the neighbours' similarities (lower: sharper)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"Expansion.k must be an int >= 1 (bank neighbours); received {self.k!r}")
        for name, low in (("weight", 0.0), ("temperature", None)):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not number or not np.isfinite(value) or (value < 0 if low is not None else value <= 0):
                bound = ">= 0" if low is not None else "> 0"
                raise ValueError(f"Expansion.{name} must be a finite number {bound}; received {value!r}")


def expansion_pairs(bank: QueryBank, query_modality: str) -> tuple[np.ndarray, np.ndarray]:
    """``(keys [B, D], values [B, D])`` for queries of ``query_modality``: text queries are compared
    with the bank's captions and take their images; image queries are compared with the bank's images
    that have a caption and take the normalised mean of those captions."""
    if query_modality not in OTHER_MODALITY:
        raise ValueError(f"query modality must be 'text' or 'image'; received {query_modality!r}")
    if bank.pairs is None:
        raise ValueError(
            "this query bank does not record which caption belongs to which image, so it cannot expand "
            "queries: rebuild it (retrieval.search.build_query_bank, or `retrieval demo --fresh`)"
        )
    texts, images = bank.for_queries("text"), bank.for_queries("image")
    if query_modality == "text":
        return texts, images[bank.pairs]
    sums = np.zeros_like(images, dtype=np.float64)  # [I, D]
    np.add.at(sums, bank.pairs, texts)
    has_caption = np.bincount(bank.pairs, minlength=len(images)) > 0  # [I]
    values = sums[has_caption]
    values /= np.linalg.norm(values, axis=1, keepdims=True).clip(min=1e-12)
    return images[has_caption], values.astype(np.float32)


def expand_queries(
    queries: Any, bank: QueryBank, query_modality: str, expansion: Expansion, *, chunk_size: int = 1024
) -> np.ndarray:
    """``[n, D]`` float32 unit rows: each query of ``query_modality`` ("text" / "image") expanded towards
    the partners of its ``expansion.k`` nearest bank keys (module docstring). Use them to search the
    other modality; a zero ``weight`` returns the queries normalised."""
    keys, values = expansion_pairs(bank, query_modality)
    return expand_with(queries, keys, values, expansion, chunk_size=chunk_size)


def expand_with(
    queries: Any, keys: np.ndarray, values: np.ndarray, expansion: Expansion, *, chunk_size: int = 1024
) -> np.ndarray:
    """:func:`expand_queries` with the bank's ``(keys, values)`` of :func:`expansion_pairs` given (a
    searcher computes them once)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be a [n, dim] array; received shape {q.shape}")
    if keys.shape[1] != q.shape[1]:
        raise ValueError(
            f"query bank has dim {keys.shape[1]}, the queries {q.shape[1]}: encode both with the same model"
        )
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(min=1e-12)
    if float(expansion.weight) == 0 or len(q) == 0:
        return q
    k = min(int(expansion.k), len(keys))
    out = np.empty_like(q)
    for i0 in range(0, len(q), chunk_size):
        block = q[i0 : i0 + chunk_size]  # [c, D]
        s = block @ keys.T  # [c, B]
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]  # [c, k] the k most similar keys, any order
        z = np.take_along_axis(s, top, 1).astype(np.float64) / float(expansion.temperature)  # [c, k]
        w = np.exp(z - z.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        moved = block + float(expansion.weight) * np.einsum("ck,ckd->cd", w, values[top]).astype(np.float32)
        out[i0 : i0 + chunk_size] = moved / np.linalg.norm(moved, axis=1, keepdims=True).clip(min=1e-12)
    return out
