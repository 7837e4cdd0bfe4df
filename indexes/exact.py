"""Exact search over float32 arrays: the oracle behind filters, refine and untrained indexes.

Scores follow the package convention, higher is better: inner products for ``"ip"``,
negated squared Euclidean distances for ``"l2"``. Missing results: id -1, score -inf.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["knn", "padded", "rescore"]

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def padded(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty results: scores -inf [n, k] float32, ids -1 [n, k] int64."""
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def knn(
    queries: np.ndarray, base: np.ndarray, base_ids: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``base`` [m, d] for ``queries`` [n, d] by brute force (BLAS through ``faiss.knn``).

    Returns (scores [n, k], ids [n, k]) with ids taken from ``base_ids`` [m].
    """
    scores, ids = padded(queries.shape[0], k)
    kk = min(k, base.shape[0])
    if kk == 0:
        return scores, ids
    dist, pos = faiss.knn(queries, np.ascontiguousarray(base), kk, metric=_METRICS[metric])  # [n, kk]
    if metric == "l2":
        dist = -dist
    ok = pos >= 0
    scores[:, :kk] = np.where(ok, dist, -np.inf)
    ids[:, :kk] = np.where(ok, base_ids[np.maximum(pos, 0)], -1)
    return scores, ids


def rescore(
    queries: np.ndarray, cand: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate ids ``cand`` [n, c] whose vectors are ``vectors[rows]`` (rows -1: invalid).

    Returns the best ``k`` per row, (scores [n, k], ids [n, k]); processed in query blocks
    of about 16M floats so memory stays bounded.
    """
    n, c = cand.shape
    dim = queries.shape[1]
    out_s, out_i = padded(n, k)
    step = max(1, (1 << 24) // max(c * dim, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        r = rows[lo:hi]  # [b, c]
        vecs = vectors[np.maximum(r, 0)]  # [b, c, d]
        if metric == "ip":
            s = np.einsum("bd,bcd->bc", queries[lo:hi], vecs)  # [b, c]
        else:
            s = -np.square(vecs - queries[lo:hi, None, :]).sum(axis=2)  # [b, c]
        s = np.where(r >= 0, s, -np.inf).astype(np.float32)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # [b, min(c, k)]
        w = order.shape[1]
        out_s[lo:hi, :w] = np.take_along_axis(s, order, axis=1)
        best = np.take_along_axis(cand[lo:hi], order, axis=1)
        out_i[lo:hi, :w] = np.where(np.isfinite(out_s[lo:hi, :w]), best, -1)
    return out_s, out_i
