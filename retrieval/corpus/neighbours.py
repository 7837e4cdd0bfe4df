"""Every item of a collection at or above a cosine threshold of a query: range search on a k-NN index.

A collection answers k-nearest-neighbour searches (:meth:`indexes.Collection.search`) whatever
index it holds (Flat, IVF, HNSW, PQ, or a Milvus collection); "every item with cosine >= T" is not
part of that surface. :func:`range_search` builds it on top:

1. each query asks the index for its ``k`` nearest items;
2. the candidates are re-scored exactly from their stored vectors (float32, renormalised), so a
   compressed index (PQ, SQ) never decides on its own whether a pair reaches T;
3. a query whose every candidate (itself left out) still reaches T may have more: it asks again
   with ``2k``, and so on up to ``max_k``.

What is missed, and why: an item the index does not return among the ``k`` nearest (an ANN miss,
bounded by the index's recall: none with a Flat index), and, for a query with more than ``max_k``
items above T, everything past its ``max_k`` best. Such a query is *saturated*: the result counts
them (:attr:`RangeResult.saturated`). Stopping at a fixed small ``k`` without the doubling would
silently cut every large group of duplicates at ``k``; with it, only queries whose neighbourhood
really exceeds ``max_k`` are cut, and they are told.

:func:`exact_range_search` and :func:`exact_pairs` are the references: blocked matrix products over
every vector, no index (O(n * m) work, memory of one block).

Results follow FAISS's range-search layout: ``lims`` ``[n + 1]`` and flat ``ids`` / ``scores``, query
``i``'s results in ``ids[lims[i]:lims[i + 1]]``, best first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = [
    "PairBatch",
    "RangeResult",
    "exact_pairs",
    "exact_range_search",
    "exact_scores",
    "near_pairs",
    "range_search",
    "unique_pairs",
    "unit_rows",
]

GATHER_ROWS = 1 << 16  # candidate vectors gathered at a time for the exact re-check (64 MB at d=256)


@dataclasses.dataclass(frozen=True)
class RangeResult:
    """Items at or above a threshold, per query (FAISS range-search layout)."""

    lims: np.ndarray  # [n + 1] int64: query i's results are ids[lims[i]:lims[i + 1]]
    ids: np.ndarray  # [m] int64, best first within a query
    scores: np.ndarray  # [m] float32 exact cosines
    saturated: int = 0  # queries cut at max_k (they may have more items above the threshold)
    searches: int = 0  # calls made to the index (rounds of doubling included)

    def __len__(self) -> int:
        return len(self.lims) - 1

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of query ``i``."""
        a, b = int(self.lims[i]), int(self.lims[i + 1])
        return self.ids[a:b], self.scores[a:b]


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """Near pairs found for a batch of query items: ``a < b`` (ids), their exact cosine."""

    a: np.ndarray  # [p] int64
    b: np.ndarray  # [p] int64
    scores: np.ndarray  # [p] float32
    queries: int  # items searched for this batch
    saturated: int  # of them, cut at max_k


def unit_rows(x: Any) -> np.ndarray:
    """float32 copy of ``x`` [n, d] with every row scaled to unit length (zero rows stay zero)."""
    arr = np.array(x, dtype=np.float32, copy=True, ndmin=2)  # [n, d]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)  # [n, 1]
    np.divide(arr, norms, out=arr, where=norms > 0)
    return arr


def exact_scores(collection: Any, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``[n, k]`` cosine of each query with each candidate id (-inf where the id is -1), from the
    stored vectors; the candidates' vectors are read once per call, ``GATHER_ROWS`` rows at a time."""
    out = np.full(ids.shape, -np.inf, dtype=np.float32)  # [n, k]
    valid = ids >= 0
    if not valid.any():
        return out
    unique = np.unique(ids[valid])  # [u]
    vectors = unit_rows(collection.vectors(unique))  # [u, d]
    rows_per_block = max(1, GATHER_ROWS // max(ids.shape[1], 1))
    for start in range(0, len(ids), rows_per_block):
        block = slice(start, start + rows_per_block)
        ok = valid[block]  # [b, k]
        where = np.searchsorted(unique, np.where(ok, ids[block], unique[0]))  # [b, k]
        gathered = vectors[where]  # [b, k, d]
        scores = np.einsum("bd,bkd->bk", queries[block], gathered)  # [b, k]
        out[block] = np.where(ok, scores, -np.inf)
    return out


def range_search(
    collection: Any,
    queries: Any,
    threshold: float,
    *,
    where: dict[str, Any] | None = None,
    exclude: Any = None,
    k: int = 16,
    max_k: int = 1024,
    refine: int | None = None,
) -> RangeResult:
    """Every item of ``collection`` whose cosine with a query is at least ``threshold``.

    Args:
        collection: an open collection (anything with ``search`` and ``vectors``).
        queries: ``[n, d]`` vectors (renormalised here).
        threshold: the cosine an item must reach.
        where: metadata filter the candidates must pass (see :mod:`indexes.metadata`).
        exclude: ``[n]`` ids, one per query, left out of its results (the query item itself;
            ``-1`` for none).
        k: candidates asked for at first; doubled for the queries that may have more.
        max_k: candidates per query at most.
        refine: passed to the collection's search (exact re-scoring of ``refine * k`` candidates).
    """
    q = unit_rows(queries)  # [n, d]
    n = len(q)
    own = np.full(n, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    if own.shape != (n,):
        raise ValueError(f"exclude must hold one id per query ({n}); received shape {own.shape}")
    found_ids: list[np.ndarray | None] = [None] * n
    found_scores: list[np.ndarray | None] = [None] * n
    pending = np.arange(n)
    kk = max(1, min(int(k), int(max_k)))
    saturated = searches = 0
    while pending.size:
        _, ids = collection.search(q[pending], kk, where=where, refine=refine)  # [p, kk]
        searches += 1
        exact = exact_scores(collection, q[pending], ids)  # [p, kk]
        others = (ids >= 0) & (ids != own[pending, None])  # [p, kk]
        above = others & (exact >= threshold)  # [p, kk]
        full = (ids >= 0).all(axis=1)  # the index had kk items to give: there may be more
        more = full & (above == others).all(axis=1)  # every other candidate reaches T (or only itself came)
        if kk >= max_k:
            saturated += int(more.sum())
            more[:] = False
        for row in np.flatnonzero(~more):
            keep = above[row]
            order = np.argsort(-exact[row][keep], kind="stable")
            found_ids[pending[row]] = ids[row][keep][order]
            found_scores[pending[row]] = exact[row][keep][order]
        pending = pending[more]
        kk = min(2 * kk, int(max_k))
    counts = np.array([len(x) for x in found_ids], dtype=np.int64)  # type: ignore[arg-type]
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids_out = np.concatenate(found_ids) if n else np.zeros(0, dtype=np.int64)  # type: ignore[arg-type]
    scores_out = np.concatenate(found_scores) if n else np.zeros(0, dtype=np.float32)  # type: ignore[arg-type]
    return RangeResult(lims, ids_out.astype(np.int64), scores_out.astype(np.float32), saturated, searches)


def exact_range_search(
    vectors: Any, ids: Any, queries: Any, threshold: float, *, exclude: Any = None, block: int = 4096
) -> RangeResult:
    """The reference of :func:`range_search`: every row of ``vectors`` (named by ``ids``) whose
    cosine with a query is at least ``threshold``, by blocked matrix products."""
    base = unit_rows(vectors)  # [m, d]
    names = np.asarray(ids, dtype=np.int64)
    q = unit_rows(queries)  # [n, d]
    own = np.full(len(q), -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(q))]
    for start in range(0, len(base), block):
        scores = q @ base[start : start + block].T  # [n, b]
        rows, cols = np.nonzero(scores >= threshold)
        cols_ids = names[start + cols]
        keep = cols_ids != own[rows]
        for r, c, s in zip(rows[keep], cols_ids[keep], scores[rows[keep], cols[keep]]):
            per_query[r].append((c, s))
    lims = [0]
    out_ids: list[int] = []
    out_scores: list[float] = []
    for hits in per_query:
        hits.sort(key=lambda hit: (-hit[1], hit[0]))
        out_ids += [int(i) for i, _ in hits]
        out_scores += [float(s) for _, s in hits]
        lims.append(len(out_ids))
    return RangeResult(
        np.asarray(lims, dtype=np.int64),
        np.asarray(out_ids, dtype=np.int64),
        np.asarray(out_scores, dtype=np.float32),
    )


def _canonical(a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> PairBatch:
    """Pairs as ``a < b``, each once (a pair found from both of its ends is kept once)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if not len(lo):
        empty = np.zeros(0, dtype=np.int64)
        return PairBatch(empty, empty, np.zeros(0, dtype=np.float32), 0, 0)
    order = np.lexsort((hi, lo))
    lo, hi, scores = lo[order], hi[order], scores[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return PairBatch(lo[first], hi[first], scores[first].astype(np.float32), 0, 0)


def near_pairs(
    collection: Any,
    ids: np.ndarray,
    threshold: float,
    *,
    where: dict[str, Any] | None = None,
    batch_size: int = 2048,
    k: int = 16,
    max_k: int = 1024,
    refine: int | None = None,
) -> Iterator[PairBatch]:
    """Near pairs among the items ``ids`` of ``collection`` (whose other candidates are limited by
    ``where``), one :class:`PairBatch` per ``batch_size`` query items, in the order of ``ids``.

    A pair is reported by the batch of whichever end found it first, once per batch; a pair both
    of whose ends found it in different batches comes twice (callers that count pairs use
    :func:`unique_pairs`; components and the greedy policy do not mind)."""
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]  # [b]
        result = range_search(
            collection,
            collection.vectors(chunk),
            threshold,
            where=where,
            exclude=chunk,
            k=k,
            max_k=max_k,
            refine=refine,
        )
        a = np.repeat(chunk, np.diff(result.lims))
        pairs = _canonical(a, result.ids, result.scores)
        yield dataclasses.replace(pairs, queries=len(chunk), saturated=result.saturated)


def exact_pairs(
    get_vectors: Callable[[np.ndarray], np.ndarray], ids: Any, threshold: float, *, block: int = 4096
) -> Iterator[PairBatch]:
    """Every pair ``a < b`` of ``ids`` whose cosine is at least ``threshold``, by blocked matrix
    products (the reference of :func:`near_pairs`, and its exact mode): ``get_vectors(ids_block)``
    gives the vectors of a block (e.g. ``collection.vectors``); one batch per block of rows."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    for i in range(0, len(ids), block):
        rows_ids = ids[i : i + block]
        rows = unit_rows(get_vectors(rows_ids))  # [b, d]
        found_a, found_b, found_s = [], [], []
        for j in range(i, len(ids), block):
            cols_ids = ids[j : j + block]
            cols = rows if j == i else unit_rows(get_vectors(cols_ids))  # [c, d]
            scores = rows @ cols.T  # [b, c]
            r, c = np.nonzero(scores >= threshold)
            keep = rows_ids[r] < cols_ids[c]
            found_a.append(rows_ids[r[keep]])
            found_b.append(cols_ids[c[keep]])
            found_s.append(scores[r[keep], c[keep]].astype(np.float32))
        yield PairBatch(
            np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s), len(rows_ids), 0
        )


def unique_pairs(batches: Iterator[PairBatch] | list[PairBatch]) -> PairBatch:
    """All pairs of ``batches`` in one batch, each once (in memory: for tests and small sets)."""
    batches = list(batches)
    if not batches:
        empty = np.zeros(0, dtype=np.int64)
        return PairBatch(empty, empty, np.zeros(0, dtype=np.float32), 0, 0)
    merged = _canonical(
        np.concatenate([b.a for b in batches]),
        np.concatenate([b.b for b in batches]),
        np.concatenate([b.scores for b in batches]),
    )
    return dataclasses.replace(
        merged, queries=sum(b.queries for b in batches), saturated=sum(b.saturated for b in batches)
    )
