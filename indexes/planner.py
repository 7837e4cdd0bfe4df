"""How one search runs over a collection's parts (segments and the buffer of unsaved items).

Plan (the same for any number of segments):

* no filter: every part's index is searched for ``k`` (times ``refine``) candidates, removed rows
  masked by an ID selector (a row bitmap); parts without an index (Flat collections, untrained
  IVF) are searched exactly over their raw vectors. IVF parts share one coarse assignment of the
  queries (see :mod:`indexes.template`). The candidates are merged by score; with ``refine`` they
  are rescored exactly from the raw vectors.
* a filter (``where``) matching at most ``exact_filter_max`` items, at most ``k``, or less than
  ``hnsw_sparse_filter`` of an HNSW collection: exact search over the matching vectors.
* a broader filter: the indexes with a selector of the matching rows and ``nprobe`` / ``efSearch``
  widened by the selectivity.
* any query row left with fewer than ``min(k, eligible items)`` hits is answered exactly.

Scores are higher-is-better (see :mod:`indexes.exact`); missing results are id -1 / score -inf.
The sizes named here are fields of :class:`indexes.limits.Limits` (the view carries them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from indexes import exact
from indexes import faiss_index as fi
from indexes.limits import Limits
from indexes.segment import Part
from indexes.template import Template, search_part

__all__ = ["Match", "View", "exact_all", "gather", "search"]

_RESCORE_FLOATS = 1 << 24  # rescoring works in query blocks of about this many floats


@dataclass(frozen=True)
class View:
    """A consistent picture of a collection for one search: its parts and how to search them."""

    parts: tuple[Part, ...]
    template: Template
    metric: str
    knobs: dict[str, Any]  # nprobe / efSearch / refine in use
    n_live: int
    limits: Limits


@dataclass
class Match:
    """The items a filter admits: sorted ids, and per part the rows (ascending) they are."""

    ids: np.ndarray
    rows: list[np.ndarray]
    selectors: list[tuple[Any, ...] | None] | None = None

    @classmethod
    def of(cls, parts: Sequence[Part], found: Sequence[np.ndarray]) -> Match:
        """From the ids each part's metadata matched (removed rows still have metadata: dropped here)."""
        rows, live = [], []
        for part, ids in zip(parts, found):
            r = part.rows_of(ids)
            rows.append(r[r >= 0])
            live.append(ids[r >= 0])
        ids = np.concatenate(live) if live else np.zeros(0, dtype=np.int64)
        return cls(ids, rows)

    def mask(self, i: int, part: Part) -> np.ndarray:
        """bool [rows] of part ``i`` (``part``): True on the rows the filter admits."""
        mask = np.zeros(part.rows, dtype=bool)
        mask[self.rows[i]] = True
        return mask

    def part_selectors(self, parts: Sequence[Part]) -> list[tuple[Any, ...] | None]:
        if self.selectors is None:
            self.selectors = [part.selector(self.mask(i, part)) for i, part in enumerate(parts)]
        return self.selectors

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + sum(r.nbytes for r in self.rows)


def search(
    view: View, q: np.ndarray, k: int, match: Match | None, refine: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores [n, k], ids [n, k]) of ``q`` [n, d] over the view; ``match`` restricts to a filter.

    A batch is split into one block of queries per FAISS thread, each searched through every
    segment by one thread: a segment costs one more pass over the lists of a block, not one more
    round of thread start-up and waiting per call (which, with several segments, cost a third of
    the throughput on 2 cores). FAISS releases the GIL while it searches.
    """
    threads = faiss.omp_get_max_threads()
    n = q.shape[0]
    chunk = view.limits.thread_queries  # smallest block of queries worth a thread of its own
    if threads > 1 and n >= 2 * chunk:
        blocks = np.array_split(np.arange(n), min(threads, n // chunk))
        pool = exact.thread_pool(threads)
        parts = list(pool.map(lambda b: _one_thread(view, q[b[0] : b[-1] + 1], k, match, refine), blocks))
        return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
    return _search(view, q, k, match, refine)


def _one_thread(
    view: View, q: np.ndarray, k: int, match: Match | None, refine: int
) -> tuple[np.ndarray, np.ndarray]:
    faiss.omp_set_num_threads(1)  # this worker thread's own OpenMP setting
    return _search(view, np.ascontiguousarray(q), k, match, refine)


def _search(
    view: View, q: np.ndarray, k: int, match: Match | None, refine: int
) -> tuple[np.ndarray, np.ndarray]:
    n = q.shape[0]
    kind = view.template.kind
    if match is not None:
        if match.ids.size == 0:
            return exact.padded(n, k)
        frac = match.ids.size / max(view.n_live, 1)
        hnsw_sparse = kind == "hnsw" and frac < view.limits.hnsw_sparse_filter
        if (
            view.template.is_flat
            or match.ids.size <= view.limits.exact_filter_max
            or match.ids.size <= k
            or hnsw_sparse
        ):
            return exact_matches(view, q, k, match)
        scores, ids = ann(view, q, k, refine, match, frac)
        return _fill_short(view, q, k, scores, ids, match)
    if view.n_live == 0:
        return exact.padded(n, k)
    if view.template.is_flat:
        return exact_all(view, q, k)
    scores, ids = ann(view, q, k, refine, None, 1.0)
    return _fill_short(view, q, k, scores, ids, None)


def widened(knobs: dict[str, Any], template: Template, k: int, fraction: float) -> dict[str, Any]:
    """``nprobe`` / ``efSearch`` for a search whose selector admits ``fraction`` of the items: a filtered
    search meets correspondingly fewer eligible items per list or graph step, so both grow by
    ``1 / fraction`` (at most 16x; skipped items cost a membership test, not a distance)."""
    boost = min(16.0, 1.0 / max(fraction, 1e-6))
    out = dict(knobs)
    if template.is_ivf:
        out["nprobe"] = int(min(template.nlist, max(1, int(knobs.get("nprobe") or 1)) * boost))
    elif template.kind == "hnsw":
        out["efSearch"] = int(max(int(knobs.get("efSearch") or fi.DEFAULT_EF_SEARCH), k) * boost)
    return out


def ann(
    view: View, q: np.ndarray, k: int, refine: int, match: Match | None, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from every part's index (exact for parts without one), merged; rescored when ``refine``."""
    kk = k * refine if refine else k
    knobs = widened(view.knobs, view.template, kk, fraction) if match is not None else view.knobs
    parts = view.parts
    coarse = None
    if any(p.index is not None and p.index.kind == "lists" for p in parts):
        coarse = view.template.coarse(q, int(knobs.get("nprobe") or 1))
    selectors = match.part_selectors(parts) if match is not None else [p.selector(None) for p in parts]
    results = []
    for i, part in enumerate(parts):
        if part.rows == 0 or (match is not None and match.rows[i].size == 0):
            continue
        if part.index is None or (selectors[i] is not None and not _takes_selector(part)):
            allowed = None if match is None else match.mask(i, part)
            if allowed is None:
                allowed = part.live_mask()
            scores, rows = _knn_rows(view, q, part.vectors, kk, allowed)
            results.append((scores, np.where(rows >= 0, np.asarray(part.ids)[np.maximum(rows, 0)], -1)))
            continue
        sel = selectors[i][0] if selectors[i] is not None else None
        dist, labels = search_part(part.index, q, kk, knobs, sel, coarse)
        results.append((exact.scores_of(dist, labels, view.metric), part.labels_to_ids(labels)))
    scores, ids = exact.merge(results, q.shape[0], kk)
    if refine:
        scores, ids = rescore(view, q, ids, k)
    return scores, ids


def _takes_selector(part: Part) -> bool:
    index = part.index
    assert index is not None
    if index.takes_selector is None:
        index.takes_selector = index.kind == "lists" or fi.accepts_selector(index.index)
    return index.takes_selector


def _knn_rows(
    view: View, q: np.ndarray, base: np.ndarray, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    limits = view.limits
    return exact.knn_rows(q, base, k, view.metric, allowed, limits.exact_block_rows, limits.thread_queries)


def exact_all(view: View, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over every live row of every part."""
    results = []
    for part in view.parts:
        if part.rows == 0:
            continue
        scores, rows = _knn_rows(view, q, part.vectors, k, part.live_mask())
        results.append((scores, np.where(rows >= 0, np.asarray(part.ids)[np.maximum(rows, 0)], -1)))
    return exact.merge(results, q.shape[0], k)


def exact_matches(view: View, q: np.ndarray, k: int, match: Match) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the rows a filter admits (gathered; filters answered this way match few)."""
    results = []
    for part, rows in zip(view.parts, match.rows):
        if rows.size:
            scores, pos = _knn_rows(view, q, np.asarray(part.vectors[rows]), k, None)
            results.append((scores, np.where(pos >= 0, np.asarray(part.ids)[rows][np.maximum(pos, 0)], -1)))
    return exact.merge(results, q.shape[0], k)


def _fill_short(
    view: View, q: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray, match: Match | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows where the index found fewer than min(k, eligible items) (e.g. too few in the probed lists):
    answer them exactly."""
    want = min(k, view.n_live if match is None else match.ids.size)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
    if short.size:
        sub = q[short]
        s, i = exact_all(view, sub, k) if match is None else exact_matches(view, sub, k, match)
        scores[short], ids[short] = s, i
    return scores, ids


def gather(parts: Sequence[Part], ids: np.ndarray) -> np.ndarray:
    """Vectors [len(ids), d] of live ids (rows for id -1 or unknown ids are zero)."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    dim = parts[0].vectors.shape[1] if parts else 0
    out = np.zeros((ids.size, dim), dtype=np.float32)
    if not parts or ids.size == 0:
        return out
    which = owners(parts, ids)
    for i, part in enumerate(parts):
        sel = np.flatnonzero((which == i) & (ids >= 0))
        if sel.size == 0:
            continue
        rows = part.rows_of(ids[sel])
        ok = rows >= 0
        if ok.any():
            order = np.argsort(rows[ok], kind="stable")  # ascending rows: sequential reads of a memmap
            picked = sel[ok][order]
            out[picked] = part.vectors[rows[ok][order]]
    return out


def owners(parts: Sequence[Part], ids: np.ndarray) -> np.ndarray:
    """Position in ``parts`` of the part whose id range may hold each id (-1: before every part).

    Parts hold disjoint, ascending id ranges; parts without rows hold no range and own no id
    (whatever their position: collections written by earlier versions may hold empty segments).
    """
    nonempty = np.array([i for i, p in enumerate(parts) if p.rows], dtype=np.int64)
    if nonempty.size == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    mins = np.array([parts[int(i)].id_min for i in nonempty], dtype=np.int64)
    slot = np.searchsorted(mins, ids, side="right") - 1
    return np.where(slot >= 0, nonempty[np.maximum(slot, 0)], -1)


def locate(parts: Sequence[Part], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(part index, row) of each id; -1 / -1 where the id is not a live item."""
    ids = np.asarray(ids, dtype=np.int64)
    part_of = np.full(ids.shape, -1, dtype=np.int64)
    row_of = np.full(ids.shape, -1, dtype=np.int64)
    if not parts or ids.size == 0:
        return part_of, row_of
    which = owners(parts, ids)
    for i, part in enumerate(parts):
        sel = np.flatnonzero(which == i)
        if sel.size:
            rows = part.rows_of(ids[sel])
            ok = rows >= 0
            part_of[sel[ok]] = i
            row_of[sel[ok]] = rows[ok]
    return part_of, row_of


def rescore(view: View, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate ids [n, c] from the raw vectors; best ``k`` per row."""
    n, c = cand.shape
    dim = q.shape[1]
    step = max(1, _RESCORE_FLOATS // max(c * dim, 1))
    out_s, out_i = exact.padded(n, k)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        block = cand[lo:hi]
        vecs = gather(view.parts, block).reshape(hi - lo, c, dim)  # [b, c, d]
        s, i = exact.rescore(q[lo:hi], block, vecs, k, view.metric)
        out_s[lo:hi], out_i[lo:hi] = s, i
    return out_s, out_i
