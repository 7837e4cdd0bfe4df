"""Array helpers of the Milvus collection: input checks, result parsing, top-k merging.

The input checks word their errors exactly as the local collection does, so a user sees the
same message whichever backend a location names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_ids", "as_vectors", "check_int", "hits_to_arrays", "merge_topk"]


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, received {value!r}")
    return int(value)


def as_ids(ids: Any) -> np.ndarray:
    """int64 [n] from any 1-D sequence of integers (a scalar becomes [1])."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"ids must be a 1-D sequence of integers, received {arr.dtype} array of shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


def as_vectors(
    x: Any, what: str, dim: int, where: str, fingerprint: str | None, allow_1d: bool
) -> np.ndarray:
    """float32 C-contiguous [n, dim] from ``x``; ``ValueError`` for wrong shape, dtype, dim or non-finite values."""
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise ValueError(f"{what} must be a numeric array, received {type(x).__name__}") from exc
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{what} must be a real-valued float array, received dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        shape = "[n, d] or [d]" if allow_1d else "[n, d]"
        raise ValueError(f"{what} must be a 2-D array {shape}, received shape {list(arr.shape)}")
    if arr.shape[1] != dim:
        raise ValueError(
            f"{what} have dim {arr.shape[1]}, collection {where} has dim {dim}: "
            f"use vectors from the model that built it (fingerprint {fingerprint})"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr.sum(dtype=np.float64)) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{what} contain NaN or infinite values in rows {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}: clean or drop them first"
        )
    return arr


def hits_to_arrays(result: Any, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A Milvus search result (one hit list per query) -> (scores float32 [n, k], ids int64 [n, k]).

    Scores become higher-is-better: inner products as they are, squared L2 distances negated.
    Missing hits are id -1, score -inf.
    """
    n = len(result)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    for r, hits in enumerate(result):
        hit_ids = getattr(hits, "ids", None)
        dists = getattr(hits, "distances", None)
        if hit_ids is None or dists is None:
            hit_ids = [h["id"] for h in hits]
            dists = [h["distance"] for h in hits]
        m = min(len(hit_ids), k)
        if m:
            ids[r, :m] = np.asarray(hit_ids[:m], dtype=np.int64)
            d = np.asarray(dists[:m], dtype=np.float32)
            scores[r, :m] = d if metric == "ip" else -d
    return scores, ids


def merge_topk(
    scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of two result sets [n, a] and [n, b] per row (ties keep the first set's order)."""
    s = np.hstack([scores, more_scores])  # [n, a + b]
    i = np.hstack([ids, more_ids])
    s = np.where(i >= 0, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # [n, k]
    out_s = np.take_along_axis(s, order, axis=1).astype(np.float32)
    out_i = np.take_along_axis(i, order, axis=1)
    out_i = np.where(np.isfinite(out_s), out_i, -1)
    if out_s.shape[1] < k:
        pad = k - out_s.shape[1]
        out_s = np.hstack([out_s, np.full((out_s.shape[0], pad), -np.inf, dtype=np.float32)])
        out_i = np.hstack([out_i, np.full((out_i.shape[0], pad), -1, dtype=np.int64)])
    return out_s, out_i
