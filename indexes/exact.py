"""Exact search over float32 arrays: the oracle behind Flat collections, filters, refine and untrained indexes.

Scores follow the package convention, higher is better: inner products for ``"ip"``,
negated squared Euclidean distances for ``"l2"``. Missing results: id -1, score -inf.
Arrays may be memory-mapped: :func:`knn_rows` reads them block by block and copies only the
live rows of blocks that contain removed ones, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import faiss
import numpy as np

from indexes.limits import DEFAULT_LIMITS

__all__ = ["knn", "knn_rows", "merge", "padded", "rescore", "scores_of"]

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
BLOCK_ROWS = DEFAULT_LIMITS.exact_block_rows  # rows per block of a blockwise exact search (64 MB at d=256)
PARALLEL_QUERIES = DEFAULT_LIMITS.thread_queries  # below twice this many queries, large searches split rows
# From this many queries a brute-force search is one matrix product (BLAS) per block instead of
# one scan of the data per query. FAISS 1.15's own threshold (128,000 query floats: 500 queries of
# dim 256) leaves batches of 20-500 queries 4-6x slower per query than BLAS on 2 cores.
BLAS_FROM_QUERIES = 20
_blas_lock = threading.Lock()


@contextmanager
def _blas_threshold(n_queries: int, dim: int) -> Iterator[None]:
    """Let ``faiss.knn`` use BLAS for this call when the batch is large enough (restored afterwards)."""
    want = BLAS_FROM_QUERIES * dim
    if n_queries < BLAS_FROM_QUERIES or faiss.cvar.distance_compute_blas_threshold <= want:
        yield
        return
    with _blas_lock:
        before = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = want
    try:
        yield
    finally:
        with _blas_lock:
            faiss.cvar.distance_compute_blas_threshold = before


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
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: str,
    allowed: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
    thread_queries: int = PARALLEL_QUERIES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``base`` [m, d] (rows where ``allowed`` [m] bool is True, all when None).

    Returns (scores [n, k], rows [n, k]); -inf / -1 where fewer than k rows qualify. Rows are
    searched in place (a memory map stays a memory map) except in blocks of ``block_rows`` holding
    removed rows, whose live rows are copied one block at a time. Fewer than ``2 * thread_queries``
    queries over many rows are split by rows across the FAISS threads (FAISS parallelises a
    brute-force search over queries only).
    """
    n = queries.shape[0]
    m = base.shape[0]
    if m == 0 or k <= 0:
        return padded(n, max(k, 0))
    ranges = _ranges(n, m, allowed, block_rows, thread_queries)
    if len(ranges) > 1 and n < 2 * thread_queries:
        threads = faiss.omp_get_max_threads()
        pool = thread_pool(threads)
        found = list(pool.map(lambda r: _one_thread_rows(queries, base, k, metric, allowed, r), ranges))
        return merge(found, n, k)
    return merge([_rows_of_range(queries, base, k, metric, allowed, r) for r in ranges], n, k)


_POOL: ThreadPoolExecutor | None = None


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """One pool of search threads per process (FAISS releases the GIL while it searches)."""
    global _POOL
    with _blas_lock:
        if _POOL is None or _POOL._max_workers != threads:
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="indexes-search")
        return _POOL


def _ranges(
    n: int, m: int, allowed: np.ndarray | None, block_rows: int, thread_queries: int
) -> list[tuple[int, int]]:
    """Row ranges to search: whole when nothing is removed (split per thread for a few queries over
    many rows), else blocks of ``block_rows`` so that copies of live rows stay small."""
    if allowed is not None and not allowed.all():
        return [(lo, min(m, lo + block_rows)) for lo in range(0, m, block_rows)]
    threads = faiss.omp_get_max_threads()
    if threads > 1 and n < 2 * thread_queries and m >= 2 * block_rows:
        bounds = np.linspace(0, m, threads + 1).astype(int)
        return [(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
    return [(0, m)]


def _one_thread_rows(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, allowed: np.ndarray | None, r: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    faiss.omp_set_num_threads(1)  # this worker thread's own OpenMP setting
    return _rows_of_range(queries, base, k, metric, allowed, r)


def _rows_of_range(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, allowed: np.ndarray | None, r: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = r
    n = queries.shape[0]
    if allowed is None or allowed[lo:hi].all():
        block, rows = base[lo:hi], None
    else:
        rows = np.flatnonzero(allowed[lo:hi]) + lo
        if rows.size == 0:
            return padded(n, 0)
        block = base[rows]  # copy of the live rows of this block only
    kk = min(k, block.shape[0])
    with _blas_threshold(n, queries.shape[1]):
        dist, pos = faiss.knn(
            queries, np.ascontiguousarray(block, dtype=np.float32), kk, metric=_METRICS[metric]
        )  # [n, kk]
    scores = scores_of(dist, pos, metric)
    found = np.where(pos >= 0, (pos + lo) if rows is None else rows[np.maximum(pos, 0)], -1)
    return scores, found.astype(np.int64, copy=False)


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
