"""Pick an index for (count, dim, memory budget) and tune its search parameters to a recall target.

The choice follows the approach of autofaiss (criteo/autofaiss): the user states budgets,
the tool picks the index.

* up to ``FLAT_MAX`` vectors: ``Flat`` (exact; brute force is fast at this size);
* up to ``HNSW_MAX`` vectors, when the graph fits the budget: ``HNSW32``;
* beyond, ``IVF{nlist},Flat`` when it fits, else ``IVF{nlist},PQ{m}`` with the largest
  ``m`` that fits; PQ results are rescored exactly from the raw vector store (``refine``).

``nlist`` is the power of two nearest to ``2 * sqrt(n)`` (capped so that every centroid
gets at least 39 training points). The memory figures are estimates of the index alone;
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
from typing import Any

import numpy as np

__all__ = ["choose_index", "drop_self", "estimate_memory", "parse_memory", "recall_at_k", "tune"]

logger = logging.getLogger(__name__)

FLAT_MAX = 20_000
HNSW_MAX = 300_000
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
    m = re.fullmatch(r"(?:OPQ\d+(?:_\d+)?,)?IVF(\d+),(Flat|PQ(\d+)(?:x8)?)", spec)
    if m:
        nlist = int(m.group(1))
        code = dim * 4 if m.group(2) == "Flat" else int(m.group(3))
        return n * code + ids + nlist * dim * 4
    return n * dim * 4 + ids


def choose_index(n: int, dim: int, memory_budget: int | None = None) -> str:
    """The factory string ``index="auto"`` builds for ``n`` vectors of ``dim`` (see module doc)."""
    budget = math.inf if memory_budget is None else memory_budget

    def fits(spec: str) -> bool:
        return estimate_memory(spec, n, dim) <= budget

    if n <= FLAT_MAX and fits("Flat"):
        return "Flat"
    hnsw = f"HNSW{HNSW_M}"
    if n <= HNSW_MAX and fits(hnsw):
        return hnsw
    nlist = choose_nlist(n)
    ivf_flat = f"IVF{nlist},Flat"
    if fits(ivf_flat):
        return ivf_flat
    for m in PQ_CHOICES:
        if dim % m == 0 and m <= dim:
            spec = f"IVF{nlist},PQ{m}"
            if fits(spec):
                return spec
    smallest = (
        min(estimate_memory(f"IVF{nlist},PQ{m}", n, dim) for m in PQ_CHOICES if dim % m == 0)
        if any(dim % m == 0 for m in PQ_CHOICES)
        else estimate_memory(ivf_flat, n, dim)
    )
    raise ValueError(
        f"memory_budget {memory_budget} bytes is too small for {n} vectors of dim {dim}: the smallest index "
        f"considered needs about {smallest} bytes; raise the budget or pass an explicit index spec"
    )


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


def tune(
    kind: str,
    nlist: int,
    has_codes: bool,
    run: Callable[[dict[str, Any], int], np.ndarray],
    truth: np.ndarray,
    self_ids: np.ndarray,
    k: int,
    recall_target: float,
) -> dict[str, Any]:
    """Smallest-latency ``nprobe`` / ``efSearch`` / ``refine`` reaching ``recall_target``.

    ``run(params, k + 1) -> ids [q, k + 1]`` searches the sample queries with ``params``;
    ``truth`` [q, k] are the exact neighbours without the queries themselves. The sample
    estimate must beat the target by two standard errors (binomial, over the q * k
    neighbours), and the chosen setting is one step above the first that does (twice the
    refine factor for compressed codes, the next nprobe / efSearch otherwise), so that the
    recall on unseen queries meets it too.
    Returns the chosen params plus ``tuned_recall`` (reached recall) and ``tune_seconds``.
    """
    start = time.perf_counter()
    if kind == "ivf":
        knob, grid = (
            "nprobe",
            [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p < nlist] + [nlist],
        )
    elif kind == "hnsw":
        knob, grid = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        knob, grid = "", [0]
    refines = (1, 2, 4, 8, 16) if has_codes else (0,)
    pairs = max(int((truth >= 0).sum()), 1)
    margin = 2.0 * math.sqrt(recall_target * (1.0 - recall_target) / pairs)
    bar = min(1.0, recall_target + margin)

    def measure(refine: int, value: int) -> tuple[dict[str, Any], float, float]:
        params: dict[str, Any] = {"refine": refine}
        if knob:
            params[knob] = value
        t0 = time.perf_counter()
        found = drop_self(run(params, k + 1), self_ids, k)
        seconds = time.perf_counter() - t0
        recall = recall_at_k(found, truth)
        logger.debug("tune %s: recall@%d=%.4f in %.3fs", params, k, recall, seconds)
        return params, recall, seconds

    best: tuple[float, dict[str, Any], float] | None = None  # (seconds, params, recall)
    fallback: tuple[float, dict[str, Any]] = (-1.0, {})
    for refine in refines:
        previous = -1.0
        for j, value in enumerate(grid):
            params, recall, seconds = measure(refine, value)
            if recall > fallback[0]:
                fallback = (recall, params)
            if recall >= bar:
                # safety step: stored vectors as queries flatter the index a little compared with
                # fresh queries (seen on clustered data), so go one step further on the knob that
                # limits recall: the refine factor for compressed codes, else nprobe / efSearch
                if has_codes:
                    params, recall, seconds = measure(2 * max(refine, 1), value)
                elif j + 1 < len(grid):
                    params, recall, seconds = measure(refine, grid[j + 1])
                if best is None or seconds < best[0]:
                    best = (seconds, params, recall)
                break
            if recall - previous < 1e-3 and value >= 64:
                break  # this refine factor has plateaued below the target
            previous = recall
        if best is not None and refine >= 4:
            break
    if best is None:
        logger.warning(
            "recall target %.3f (+%.3f margin) not reached; best recall@%d %.4f with %s",
            recall_target,
            margin,
            k,
            fallback[0],
            fallback[1],
        )
        chosen, reached = fallback[1], fallback[0]
    else:
        chosen, reached = best[1], best[2]
    out = {key: value for key, value in chosen.items() if value}
    out["tuned_recall"] = round(float(reached), 4)
    out["tune_seconds"] = round(time.perf_counter() - start, 3)
    return out
