"""Exact search over float32 arrays: the oracle behind Flat collections, filters, refine and untrained indexes.

Scores follow the package convention, higher is better: inner products for ``"ip"``,
negated squared Euclidean distances for ``"l2"``. Missing results: id -1, score -inf.
Arrays may be memory-mapped: :func:`knn_rows` reads them block by block and copies only the
live rows of blocks that contain removed ones, so memory stays bounded whatever the size.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

__all__ = ["knn", "knn_rows", "merge", "padded", "rescore", "scores_of"]

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
BLOCK_ROWS = 1 << 16  # rows per block of a blockwise exact search (64 MB at d=256)


def padded(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty results: scores -inf [n, k] float32, ids -1 [n, k] int64."""
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def scores_of(dist: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """FAISS distances -> package scores (higher is better, -inf where the label is -1), in place."""
    if metric == "l2":
        np.negative(dist, out=dist)
    dist[labels < 0] = -np.inf
    return dist


def knn(
    queries: np.ndarray, base: np.ndarray, base_ids: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``base`` [m, d] for ``queries`` [n, d] by brute force (BLAS through ``faiss.knn``).

    Returns (scores [n, k], ids [n, k]) with ids taken from ``base_ids`` [m].
    """
    scores, rows = knn_rows(queries, base, k, metric)
    ids = np.where(rows >= 0, np.asarray(base_ids)[np.maximum(rows, 0)], -1)
    return scores, ids.astype(np.int64, copy=False)


def knn_rows(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``base`` [m, d] (rows where ``allowed`` [m] bool is True, all when None).

    Returns (scores [n, k], rows [n, k]); -inf / -1 where fewer than k rows qualify.
    """
    n = queries.shape[0]
    m = base.shape[0]
    if m == 0 or k <= 0:
        return padded(n, max(k, 0))
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, m, BLOCK_ROWS):
        hi = min(m, lo + BLOCK_ROWS)
        if allowed is None or allowed[lo:hi].all():
            block, rows = base[lo:hi], None
        else:
            rows = np.flatnonzero(allowed[lo:hi]) + lo
            if rows.size == 0:
                continue
            block = base[rows]  # copy of the live rows of this block only
        kk = min(k, block.shape[0])
        dist, pos = faiss.knn(
            queries, np.ascontiguousarray(block, dtype=np.float32), kk, metric=_METRICS[metric]
        )  # [n, kk]
        scores = scores_of(dist, pos, metric)
        found = np.where(pos >= 0, (pos + lo) if rows is None else rows[np.maximum(pos, 0)], -1)
        parts.append((scores, found.astype(np.int64, copy=False)))
    return merge(parts, n, k)


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row over several (scores [n, ki], ids [n, ki]) results, best first (stable on ties)."""
    parts = [p for p in parts if p[0].shape[1]]
    if not parts:
        return padded(n, k)
    if len(parts) == 1 and parts[0][0].shape[1] >= k:
        s, i = parts[0]
        return s[:, :k], i[:, :k]
    scores = np.hstack([p[0] for p in parts])  # [n, sum ki]
    ids = np.hstack([p[1] for p in parts])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [n, min(k, sum ki)]
    out_s, out_i = padded(n, k)
    w = order.shape[1]
    out_s[:, :w] = np.take_along_axis(scores, order, axis=1)
    out_i[:, :w] = np.where(np.isfinite(out_s[:, :w]), np.take_along_axis(ids, order, axis=1), -1)
    return out_s, out_i


def rescore(
    queries: np.ndarray, cand: np.ndarray, vectors: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate ids ``cand`` [n, c] whose vectors are ``vectors`` [n, c, d] (rows of
    ``cand`` equal to -1 are ignored). Returns the best ``k`` per row, (scores [n, k], ids [n, k])."""
    n = cand.shape[0]
    if metric == "ip":
        s = np.einsum("bd,bcd->bc", queries, vectors)  # [n, c]
    else:
        s = -np.square(vectors - queries[:, None, :]).sum(axis=2)  # [n, c]
    s = np.where(cand >= 0, s, -np.inf).astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # [n, min(c, k)]
    out_s, out_i = padded(n, k)
    w = order.shape[1]
    out_s[:, :w] = np.take_along_axis(s, order, axis=1)
    best = np.take_along_axis(cand, order, axis=1)
    out_i[:, :w] = np.where(np.isfinite(out_s[:, :w]), best, -1)
    return out_s, out_i
