"""Near-duplicates in a collection: find the groups, write them, remove all but one of each, or
estimate how many there are from a sample.

Two items are near-duplicates when the cosine of their vectors is at least ``threshold``
(SemDeDup, Abbas et al. 2023, removes semantic duplicates of web data this way; the LAION builders
deduplicated by embedding too). Pairs come from :func:`retrieval.corpus.neighbours.near_pairs`
(k-NN through the collection's own index, every pair re-checked exactly, ``k`` doubled while an
item's neighbours are all above the threshold) or, with ``exact``, from blocked brute force over
every vector. They are grouped by one of two policies (:mod:`retrieval.corpus.components`):

* ``components``: connected components of the pairs; the member ``keep`` prefers stays.
* ``greedy``: items visited in ``keep``'s order of preference; an item is dropped when a kept item
  is its near-duplicate (keep-the-first).

``keep`` is ``"first"`` (the lowest id: the item added first), ``"largest"`` (the image with the
most pixels, the longest caption) or a metadata field (the highest value; items without a number
in it come last). Ties go to the lower id.

Memory is bounded by the number of items, never by the pairs: the pairs stream in batches, the
union-find parent array lives on disk above ``memory_items`` items, the greedy policy keeps its
pairs in files, and groups are written as they are read. Images and captions are handled apart.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.components import PairStore, UnionFind, greedy_groups
from retrieval.corpus.config import DedupConfig
from retrieval.corpus.groups import GroupWriter
from retrieval.corpus.media import pixel_count
from retrieval.corpus.neighbours import (
    PairBatch,
    exact_pairs,
    exact_scores,
    near_pairs,
    range_search,
    unit_rows,
)
from retrieval.corpus.progress import progress_bar
from retrieval.corpus.selection import chosen_modalities, ids_of, open_for, where_of
from retrieval.io import atomic_write_json

__all__ = ["DedupResult", "DuplicateEstimate", "DuplicateGroups", "find_duplicates"]

GROUP_BATCH = 8192  # members whose metadata and vectors are read at a time when writing groups
Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclasses.dataclass(frozen=True)
class DuplicateGroups:
    """What was found among the items of one modality."""

    modality: str | None  # "image", "text", or None (a collection without modality field)
    items: int  # items compared
    pairs: int  # near pairs reported by the search (a pair found from both ends may count twice)
    groups: int  # groups of two or more items
    grouped: int  # items in a group
    saturated: int  # items whose neighbours were cut at max_k (they may have more)

    @property
    def duplicates(self) -> int:
        """Items that removal drops: every member of a group but the kept one."""
        return self.grouped - self.groups


@dataclasses.dataclass(frozen=True)
class DuplicateEstimate:
    """The duplicate rate of one modality, estimated from a uniform sample."""

    modality: str | None
    population: int  # items of this modality
    sample: int  # items drawn
    with_duplicates: int  # of them, items with at least one near-duplicate
    rate: float  # with_duplicates / sample
    low: float  # 95 % Wilson interval of the rate (finite-population corrected)
    high: float
    removal_share: float  # share of items removal would drop (exact when groups are cliques)
    mean_neighbours: float  # near-duplicates per item
    nearest: dict[str, float]  # quantiles of each drawn item's most similar other item
    saturated: int

    def __str__(self) -> str:
        what = {"image": "images", "text": "captions", None: "items"}[self.modality]
        near = ", ".join(f"{q} {v:.3f}" for q, v in self.nearest.items())
        return (
            f"{what}: {100 * self.rate:.2f} % of {self.sample:,} sampled have a near-duplicate "
            f"(95 % CI {100 * self.low:.2f}-{100 * self.high:.2f} %); about {100 * self.removal_share:.2f} % of "
            f"the {self.population:,} would be removed; nearest other item's cosine: {near}"
        )


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """What :func:`find_duplicates` found and did."""

    collection: str
    threshold: float
    policy: str
    keep: str
    found: tuple[DuplicateGroups, ...]  # one per modality (empty with a sample)
    estimates: tuple[DuplicateEstimate, ...]  # one per modality when sampling
    out: Path | None  # folder holding groups.jsonl, groups.parquet and summary.json
    removed: int  # items removed from the collection
    seconds: float

    @property
    def groups(self) -> int:
        return sum(f.groups for f in self.found)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.found)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (what ``summary.json`` holds)."""
        return {
            "collection": self.collection,
            "threshold": self.threshold,
            "policy": self.policy,
            "keep": self.keep,
            "found": [dict(dataclasses.asdict(f), duplicates=f.duplicates) for f in self.found],
            "estimates": [dataclasses.asdict(e) for e in self.estimates],
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        if self.estimates:
            return "\n".join(str(e) for e in self.estimates)
        lines = []
        for f in self.found:
            what = {"image": "images", "text": "captions", None: "items"}[f.modality]
            line = f"{what}: {f.groups:,} groups of near-duplicates (cosine >= {self.threshold:g}) holding {f.grouped:,} of {f.items:,}"
            line += f"; {f.duplicates:,} would go, one kept per group ({self.policy}, keep {self.keep})"
            if f.saturated:
                line += f"; {f.saturated} items had more than max_k neighbours above the threshold (raise --max-k)"
            lines.append(line)
        if self.out is not None:
            lines.append(f"groups: {self.out / 'groups.jsonl'} and {self.out / 'groups.parquet'}")
        if self.removed:
            lines.append(f"removed {self.removed:,} items from {self.collection}")
        return "\n".join([*lines, f"in {self.seconds:.1f}s"])


def find_duplicates(
    collection: Any,
    config: DedupConfig | None = None,
    *,
    out: str | Path | None = None,
    remove: bool = False,
) -> DedupResult:
    """Find the groups of near-duplicates of ``collection`` (a location or an open collection).

    ``out``: folder for ``groups.jsonl``, ``groups.parquet`` (:mod:`retrieval.corpus.groups`) and
    ``summary.json``. ``remove``: drop all but the kept member of every group from the collection
    and save it (the collection is opened for writing). With ``config.sample`` only the duplicate
    rate is estimated: nothing is written or removed. Raises
    :class:`~retrieval.corpus.selection.EmptyCollectionError` for an empty collection (or one without
    the modality asked for) and ``ValueError`` for a ``keep`` field the collection lacks.
    """
    config = config or DedupConfig()
    if config.sample and remove:
        raise ValueError("a sample only estimates the duplicate rate: drop --sample to --remove duplicates")
    started = time.perf_counter()
    coll, owned = open_for(collection, write=remove)
    try:
        modalities = chosen_modalities(coll, config.modality)
        _check_keep(coll, config.keep)
        where_text = str(getattr(coll, "path", collection))
        if config.sample:
            estimates = tuple(_estimate(coll, m, config) for m in modalities)
            return DedupResult(
                where_text, config.threshold, config.policy, config.keep, (), estimates, None, 0,
                time.perf_counter() - started,
            )  # fmt: skip
        writer = GroupWriter(out) if out is not None else None
        found: list[DuplicateGroups] = []
        dropped: list[np.ndarray] = []
        try:
            with tempfile.TemporaryDirectory(prefix="dedup-", dir=_work_parent(out)) as work:
                for modality in modalities:
                    stats, groups = _find(coll, modality, config, Path(work))
                    found.append(stats)
                    for batch in _batches_of(groups):
                        if writer is not None:
                            writer.add(coll, modality, batch)
                        dropped += [members[1:] for members in batch]
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.finish()
        removed = 0
        to_remove = np.concatenate(dropped) if dropped else np.zeros(0, dtype=np.int64)
        if remove and to_remove.size:
            coll.remove(to_remove)
            coll.save()
            removed = int(to_remove.size)
        result = DedupResult(
            where_text, config.threshold, config.policy, config.keep, tuple(found), (),
            Path(out) if out is not None else None, removed, time.perf_counter() - started,
        )  # fmt: skip
        if out is not None:
            atomic_write_json(Path(out) / "summary.json", result.summary(), indent=2)
        return result
    finally:
        if owned:
            coll.close()


def _work_parent(out: str | Path | None) -> str | None:
    """Scratch files (union-find parents, stored pairs) go beside the output, else in the temp folder."""
    if out is None:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    return str(out)


def _check_keep(coll: Any, keep: str) -> None:
    if keep in ("first", "largest") or keep in coll.fields():
        return
    raise ValueError(
        f"--keep {keep}: collection {getattr(coll, 'path', '')} has no metadata field {keep!r}; give first, "
        f"largest or one of its fields: {', '.join(coll.fields()) or '(none)'}"
    )


def _pairs(coll: Any, ids: np.ndarray, modality: str | None, config: DedupConfig) -> Iterator[PairBatch]:
    if config.exact:
        return exact_pairs(coll.vectors, ids, config.threshold, block=config.batch_size)
    return near_pairs(
        coll, ids, config.threshold, where=where_of(coll, modality), batch_size=config.batch_size,
        k=config.k, max_k=config.max_k, refine=config.refine,
    )  # fmt: skip


def _positions(ids: np.ndarray, batch: PairBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of ``batch`` as positions in ``ids``; pairs reaching an item outside ``ids`` are dropped."""
    pa = np.minimum(np.searchsorted(ids, batch.a), len(ids) - 1)
    pb = np.minimum(np.searchsorted(ids, batch.b), len(ids) - 1)
    inside = (ids[pa] == batch.a) & (ids[pb] == batch.b)
    return pa[inside], pb[inside], batch.scores[inside]


def _find(
    coll: Any, modality: str | None, config: DedupConfig, work: Path
) -> tuple[DuplicateGroups, Iterator[np.ndarray]]:
    """The statistics and the groups (id arrays, kept member first, largest groups first) of one modality."""
    ids = ids_of(coll, modality)
    n = len(ids)
    pairs = saturated = 0
    uf = store = None
    if config.policy == "components":
        on_disk = work / f"parent-{modality}.npy" if n > config.memory_items else None
        uf = UnionFind(n, on_disk)
    else:
        store = PairStore(work / f"pairs-{modality}")
    with progress_bar(n, config.progress, f"dedup {modality or 'items'}") as bar:
        for batch in _pairs(coll, ids, modality, config) if n else ():
            pa, pb, scores = _positions(ids, batch)
            pairs += len(pa)
            saturated += batch.saturated
            if uf is not None:
                uf.union(pa, pb)
            else:
                assert store is not None
                store.append(pa, pb, scores)
            bar.update(batch.queries)
    if uf is not None:
        members, reps = _component_members(uf, n)
        keys = _keep_keys(coll, ids[members], config.keep, modality)
        uf.close()
    else:
        assert store is not None
        rank = _greedy_rank(coll, ids, store, config.keep, modality)
        group = greedy_groups(n, store, rank)
        members = np.flatnonzero(group >= 0)
        reps = group[members]
        keys = rank[members].astype(np.float64)
    if config.policy == "components":  # by group, then preference: the first of each group is kept
        order = np.lexsort((members, keys, reps))
    else:  # by group, the kept item first, then preference
        order = np.lexsort((members, keys, members != reps, reps))
    members, reps = members[order], reps[order]
    starts = np.flatnonzero(np.r_[True, reps[1:] != reps[:-1]]) if len(members) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(members)])
    stats = DuplicateGroups(modality, n, pairs, len(starts), len(members), saturated)
    shown = np.lexsort((ids[members[starts]] if len(starts) else starts, -sizes))  # largest groups first

    def groups() -> Iterator[np.ndarray]:
        for g in shown:
            yield ids[members[starts[g] : starts[g] + sizes[g]]]

    return stats, groups()


def _component_members(uf: UnionFind, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions that share their component with another item, and their roots."""
    sizes = np.zeros(n, dtype=np.int64)
    for _, roots in uf.labels():
        sizes += np.bincount(roots, minlength=n)
    members, reps = [], []
    for start, roots in uf.labels():
        grouped = np.flatnonzero(sizes[roots] >= 2)
        members.append(start + grouped)
        reps.append(roots[grouped])
    if not members:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(members), np.concatenate(reps)


def _keep_keys(coll: Any, ids: np.ndarray, keep: str, modality: str | None) -> np.ndarray:
    """``[len(ids)]`` float64 sort keys, lower preferred: the id, minus the size, minus the field value."""
    if keep == "first" or not len(ids):
        return ids.astype(np.float64)
    keys = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), GROUP_BATCH):
        for j, meta in enumerate(coll.get(ids[start : start + GROUP_BATCH])):
            keys[start + j] = _key(meta or {}, keep)
    return keys


def _key(meta: dict[str, Any], keep: str) -> float:
    if keep == "largest":
        if meta.get("modality") == "text" or (meta.get("path") is None and "caption" in meta):
            return -float(len(str(meta.get("caption") or "")))
        path = meta.get("path")
        return -float(pixel_count(str(path))) if path else math.inf
    value = meta.get(keep)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.inf  # no number: the least preferred
    return -float(value)


def _greedy_rank(coll: Any, ids: np.ndarray, store: PairStore, keep: str, modality: str | None) -> np.ndarray:
    """``[n]`` visiting order of the greedy policy (a permutation: ties go to the lower id)."""
    n = len(ids)
    if keep == "first":
        return np.arange(n, dtype=np.int64)
    touched = np.zeros(n, dtype=bool)
    for a, b, _ in store.chunks():
        touched[a] = True
        touched[b] = True
    positions = np.flatnonzero(touched)
    keys = _keep_keys(coll, ids[positions], keep, modality)
    rank = np.arange(n, dtype=np.int64) + len(positions)  # untouched items: never compared
    rank[positions[np.lexsort((positions, keys))]] = np.arange(len(positions))
    return rank


def _batches_of(groups: Iterator[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Whole groups, about ``GROUP_BATCH`` members at a time."""
    batch: list[np.ndarray] = []
    size = 0
    for members in groups:
        batch.append(members)
        size += len(members)
        if size >= GROUP_BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def wilson(successes: int, n: int, population: int | None = None) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (Wilson 1927), narrowed by the finite-population
    correction ``sqrt((N - n) / (N - 1))`` when the sample is drawn without replacement from ``N``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    fpc = 1.0
    if population is not None and population > 1:
        fpc = math.sqrt(max(population - n, 0) / (population - 1))
    z2 = Z95 * Z95
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom * fpc
    if fpc == 0.0:
        return p, p
    return max(0.0, centre - half), min(1.0, centre + half)


def _estimate(coll: Any, modality: str | None, config: DedupConfig) -> DuplicateEstimate:
    ids = ids_of(coll, modality)
    n = len(ids)
    rng = np.random.default_rng(config.seed)
    assert config.sample is not None
    drawn = np.sort(rng.choice(ids, size=min(int(config.sample), n), replace=False))
    queries = unit_rows(coll.vectors(drawn)) if len(drawn) else np.zeros((0, coll.dim), np.float32)
    saturated = 0
    if config.exact:
        counts = np.zeros(len(drawn), dtype=np.int64)
        nearest = np.full(len(drawn), -np.inf, dtype=np.float32)
        for start in range(0, n, config.batch_size):
            block = ids[start : start + config.batch_size]
            scores = queries @ unit_rows(coll.vectors(block)).T  # [s, b]
            scores[drawn[:, None] == block[None, :]] = -np.inf
            counts += (scores >= config.threshold).sum(axis=1)
            nearest = np.maximum(nearest, scores.max(axis=1, initial=-np.inf))
    else:
        where = where_of(coll, modality)
        counts = np.zeros(len(drawn), dtype=np.int64)
        nearest = np.full(len(drawn), -np.inf, dtype=np.float32)
        for start in range(0, len(drawn), config.batch_size):  # memory of one batch of queries
            rows = slice(start, start + config.batch_size)
            found = range_search(
                coll, queries[rows], config.threshold, where=where, exclude=drawn[rows], k=config.k,
                max_k=config.max_k, refine=config.refine,
            )  # fmt: skip
            counts[rows], saturated = np.diff(found.lims), saturated + found.saturated
            _, near_ids = coll.search(
                queries[rows], min(config.k, n), where=where, refine=config.refine
            )  # [b, k]
            near_ids = np.where(near_ids == drawn[rows, None], -1, near_ids)
            nearest[rows] = exact_scores(coll, queries[rows], near_ids).max(axis=1, initial=-np.inf)
    with_dup = int((counts > 0).sum())
    low, high = wilson(with_dup, len(drawn), n)
    finite = nearest[np.isfinite(nearest)]
    quantiles = {
        name: float(np.quantile(finite, q)) for name, q in (("median", 0.5), ("90%", 0.9), ("99%", 0.99))
    } if len(finite) else {}  # fmt: skip
    return DuplicateEstimate(
        modality=modality,
        population=n,
        sample=len(drawn),
        with_duplicates=with_dup,
        rate=with_dup / len(drawn) if len(drawn) else 0.0,
        low=low,
        high=high,
        removal_share=float(np.mean(counts / (counts + 1.0))) if len(drawn) else 0.0,
        mean_neighbours=float(counts.mean()) if len(drawn) else 0.0,
        nearest=quantiles,
        saturated=int(saturated),
    )
