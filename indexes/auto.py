"""Pick an index for (count, dim, memory budget) and tune its search parameters to a recall target.

The choice follows the approach of autofaiss (criteo/autofaiss): the user states budgets,
the tool picks the index.

* up to ``flat_max`` vectors: ``Flat`` (exact; brute force is fast at this size);
* up to ``hnsw_max`` vectors, when the graph fits the budget: ``HNSW32``;
* beyond, ``IVF{nlist},Flat`` when it fits, else ``IVF{nlist},PQ{m}`` with the largest
  ``m`` that fits; PQ results are rescored exactly from the raw vector store (``refine``).

``nlist`` is the power of two nearest to ``2 * sqrt(n)`` (capped so that every centroid
gets at least 39 training points). ``flat_max`` and ``hnsw_max`` are fields of
:class:`indexes.limits.Limits`. The memory figures are estimates of the index alone;
the raw vector store lives on disk and is memory-mapped by read-only opens.

Tuning (:func:`tune`) measures recall@k against exact search on a sample of stored vectors
used as queries (each query's own id is left out of both lists) and walks ``nprobe`` /
``efSearch`` / ``refine`` up until the target is met, keeping the fastest setting that
meets it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexes.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "QuerySet",
    "Timing",
    "candidates",
    "choose_index",
    "drop_self",
    "estimate_memory",
    "parse_memory",
    "recall_at_k",
    "time_search",
    "tune",
]

logger = logging.getLogger(__name__)

HNSW_M = 32
PQ_CHOICES = (64, 48, 32, 24, 16, 12, 8, 4)

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "T": 1 << 40,
    "TB": 1 << 40,
}


def parse_memory(budget: int | float | str | None) -> int | None:
    """Bytes from ``4_000_000_000``, ``"4GB"``, ``"512MB"``, ``"1.5G"`` (powers of 1024); None stays None."""
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise ValueError(f"memory_budget must be bytes or a string like '4GB', received {budget!r}")
    if isinstance(budget, (int, float)):
        value = float(budget)
    elif isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", budget.upper())
        if not m:
            raise ValueError(
                f"memory_budget {budget!r} is not understood; expected bytes or e.g. '512MB', '4GB'"
            )
        value = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(
            f"memory_budget must be bytes or a string like '4GB', received {type(budget).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory_budget must be positive, received {budget!r}")
    return int(value)


def choose_nlist(n: int) -> int:
    """Power of two nearest ``2 * sqrt(n)``, at most ``n / 39``, at least 1."""
    if n < 39 * 2:
        return 1
    target = 2.0 * math.sqrt(n)
    nlist = 1 << max(0, round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def estimate_memory(spec: str, n: int, dim: int) -> int:
    """Rough resident size in bytes of index ``spec`` holding ``n`` vectors of ``dim`` floats."""
    ids = 8 * n
    if spec == "Flat":
        return n * dim * 4 + ids
    m = re.fullmatch(r"HNSW(\d+)", spec)
    if m:
        links = int(m.group(1)) * 2 * 4 * 1.1  # level-0 links (2M int32) plus upper levels (~10 %)
        return int(n * (dim * 4 + links)) + ids
    m = re.fullmatch(r"(?:OPQ\d+(?:_\d+)?,)?IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x8)?)", spec)
    if m:
        nlist = int(m.group(1))
        code = {"Flat": dim * 4, "SQ8": dim}.get(m.group(2)) or int(m.group(3))
        return n * code + ids + nlist * dim * 4
    return n * dim * 4 + ids


def candidates(
    n: int, dim: int, memory_budget: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> list[str]:
    """Index specs worth trying for ``n`` vectors of ``dim`` within ``memory_budget``, best guess first.

    ``Flat`` alone up to ``limits.flat_max``; beyond, HNSW (whenever its graph and vectors fit the
    budget) and IVF-Flat, HNSW first up to ``limits.hnsw_max`` and IVF first above (IVF builds in a fraction of the
    time), then IVF-PQ with the largest code that fits. Exact search is always the fallback.
    """
    budget = math.inf if memory_budget is None else memory_budget

    def fits(spec: str) -> bool:
        return estimate_memory(spec, n, dim) <= budget

    if n <= limits.flat_max and fits("Flat"):
        return ["Flat"]
    nlist = choose_nlist(n)
    hnsw = f"HNSW{HNSW_M}"
    ivf_flat = f"IVF{nlist},Flat"
    ordered = [hnsw, ivf_flat] if n <= limits.hnsw_max else [ivf_flat, hnsw]
    out = [spec for spec in ordered if fits(spec)]
    sq8 = f"IVF{nlist},SQ8"
    if ivf_flat not in out and fits(sq8):
        out.append(sq8)
    for m in PQ_CHOICES:
        if dim % m == 0 and m < dim:
            spec = f"IVF{nlist},PQ{m}"
            if fits(spec):
                out.append(spec)
                break
    if out:
        return out
    smallest = (
        min(estimate_memory(f"IVF{nlist},PQ{m}", n, dim) for m in PQ_CHOICES if dim % m == 0)
        if any(dim % m == 0 for m in PQ_CHOICES)
        else estimate_memory(ivf_flat, n, dim)
    )
    raise ValueError(
        f"memory_budget {memory_budget} bytes is too small for {n} vectors of dim {dim}: the smallest index "
        f"considered needs about {smallest} bytes; raise the budget or pass an explicit index spec"
    )


def choose_index(n: int, dim: int, memory_budget: int | None = None, limits: Limits = DEFAULT_LIMITS) -> str:
    """The first candidate ``index="auto"`` tries for ``n`` vectors of ``dim`` (see :func:`candidates`)."""
    return candidates(n, dim, memory_budget, limits)[0]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` [q, k] present in the same row of ``found`` [q, k'] (-1 ignored)."""
    hits = 0
    total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        total += t.size
        hits += np.intersect1d(f[f >= 0], t).size
    return hits / total if total else 1.0


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id from [q, k+1] results and keep k columns."""
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for r in range(ids.shape[0]):
        row = ids[r][ids[r] != self_ids[r]][:k]
        out[r, : row.size] = row
    return out


@dataclass
class QuerySet:
    """Queries that tuning measures recall and speed on, as the collection will be searched.

    ``where`` is the filter those queries carry (e.g. ``{"modality": "image"}`` for text->image
    queries in a collection holding both modalities); ``self_ids`` are the ids of queries that are
    themselves stored items (left out of both lists; -2 otherwise); ``truth`` [q, k] the exact
    neighbours, filled by the caller.
    """

    name: str
    queries: np.ndarray  # [q, d]
    where: dict[str, Any] | None = None
    self_ids: np.ndarray | None = None  # [q]
    truth: np.ndarray | None = None  # [q, k]


@dataclass
class Timing:
    """Seconds per query of one way of searching: in batches, and one query at a time (median)."""

    batch: float
    single: float

    def as_dict(self) -> dict[str, float]:
        return {"batch_ms": round(self.batch * 1e3, 4), "single_ms": round(self.single * 1e3, 4)}


def time_search(
    search: Callable[[np.ndarray, dict[str, Any] | None], Any],
    sets: list[QuerySet],
    repeats: int = 3,
    singles: int = 20,
) -> Timing:
    """Time ``search(queries, where)`` over ``sets``: best of ``repeats`` batch runs per query, and the
    median of up to ``singles`` one-query searches."""
    total = sum(s.queries.shape[0] for s in sets)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for qs in sets:
            search(qs.queries, qs.where)
        best = min(best, time.perf_counter() - t0)
    one: list[float] = []
    per_set = max(1, singles // max(len(sets), 1))
    for qs in sets:
        for i in range(min(per_set, qs.queries.shape[0])):
            t0 = time.perf_counter()
            search(qs.queries[i : i + 1], qs.where)
            one.append(time.perf_counter() - t0)
    return Timing(best / max(total, 1), float(np.median(one)) if one else 0.0)


def tune(
    kind: str,
    nlist: int,
    has_codes: bool,
    run: Callable[[dict[str, Any], QuerySet, int], np.ndarray],
    sets: list[QuerySet],
    k: int,
    recall_target: float,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Fastest ``nprobe`` / ``efSearch`` / ``refine`` reaching ``recall_target`` on every query set.

    ``run(params, query_set, k + 1) -> ids [q, k + 1]`` searches one set with ``params``. The sample
    estimate must beat the target by two standard errors (binomial, over the q * k neighbours of the
    smallest set), and the chosen setting is one step above the first that does (twice the refine
    factor for compressed codes, the next nprobe / efSearch otherwise), so that recall on unseen
    queries meets it too. ``time_limit`` (seconds per query, e.g. what exact search takes) stops
    walking a knob once a setting is slower: an index slower than exact search is of no use.

    Returns the chosen params plus ``tuned_recall`` (the lowest over the sets),
    ``tuned_recall_by_queries`` (per set), ``tune_seconds`` and ``reached`` (target met or not).
    """
    start = time.perf_counter()
    if kind == "ivf":
        knob, grid = (
            "nprobe",
            [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if p < nlist] + [nlist],
        )
    elif kind == "hnsw":
        knob, grid = "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
    else:
        knob, grid = "", [0]
    refines = (1, 2, 4, 8, 16, 32, 64) if has_codes else (0,)
    pairs = max(min(int((qs.truth >= 0).sum()) for qs in sets if qs.truth is not None), 1)
    margin = 2.0 * math.sqrt(recall_target * (1.0 - recall_target) / pairs)
    bar = min(1.0, recall_target + margin)
    n_queries = sum(qs.queries.shape[0] for qs in sets)

    def measure(refine: int, value: int) -> tuple[dict[str, Any], dict[str, float], float]:
        params: dict[str, Any] = {"refine": refine}
        if knob:
            params[knob] = value
        t0 = time.perf_counter()
        recalls = {}
        for qs in sets:
            assert qs.truth is not None
            self_ids = qs.self_ids if qs.self_ids is not None else np.full(qs.queries.shape[0], -2)
            found = drop_self(run(params, qs, k + 1), self_ids, k)
            recalls[qs.name] = recall_at_k(found, qs.truth)
        per_query = (time.perf_counter() - t0) / max(n_queries, 1)
        logger.debug("tune %s: recall@%d=%s in %.3f ms/query", params, k, recalls, per_query * 1e3)
        return params, recalls, per_query

    best: tuple[float, dict[str, Any], dict[str, float]] | None = None  # (seconds, params, recalls)
    fallback: tuple[float, dict[str, Any], dict[str, float]] = (-1.0, {}, {})
    for refine in refines:
        previous = -1.0
        for j, value in enumerate(grid):
            params, recalls, seconds = measure(refine, value)
            low = min(recalls.values())
            if low > fallback[0]:
                fallback = (low, params, recalls)
            if low >= bar:
                # safety step: stored vectors as queries flatter the index a little compared with
                # fresh queries (seen on clustered data), so go one step further on the knob that
                # limits recall: the refine factor for compressed codes, else nprobe / efSearch
                if has_codes:
                    params, recalls, seconds = measure(2 * max(refine, 1), value)
                elif j + 1 < len(grid):
                    params, recalls, seconds = measure(refine, grid[j + 1])
                if best is None or seconds < best[0]:
                    best = (seconds, params, recalls)
                break
            if time_limit is not None and seconds > time_limit:
                break  # slower than exact search already, and more of this knob only costs more
            if low - previous < 1e-3 and value >= 64:
                break  # this refine factor has plateaued below the target
            previous = low
        if best is not None and refine >= 4:
            break
    if best is None:
        logger.info(
            "recall target %.3f (+%.3f margin) not reached; best recall@%d %.4f with %s",
            recall_target,
            margin,
            k,
            fallback[0],
            fallback[1],
        )
        chosen, recalls, reached = fallback[1], fallback[2], False
    else:
        chosen, recalls, reached = best[1], best[2], True
    out: dict[str, Any] = {key: value for key, value in chosen.items() if value}
    out["tuned_recall"] = round(float(min(recalls.values())) if recalls else 0.0, 4)
    out["tuned_recall_by_queries"] = {name: round(float(r), 4) for name, r in recalls.items()}
    out["tune_seconds"] = round(time.perf_counter() - start, 3)
    out["reached"] = reached
    return out
