"""Groups of near-duplicates from a stream of pairs, in memory bounded by the number of items.

Items are positions ``0..n-1`` (the caller maps collection ids to positions). Two ways to group:

* :class:`UnionFind` -- connected components: two items share a group when a chain of pairs joins
  them. Unions are vectorised over a batch of pairs (numpy), the parent array lives in memory or,
  for large collections, in a memory-mapped file, so 10M items cost 80 MB of disk and only the
  pages touched in RAM. A root is always the smallest position of its set (a union points the
  larger root at the smaller one), so no cycle can form and labels are deterministic.
* :func:`greedy_groups` -- keep-the-first (as SemDeDup keeps one item of each cluster and as
  clip-retrieval's deduplication keeps the first hit): items are visited in order of preference;
  an item is kept unless a kept item is its near-duplicate, and a dropped item joins the group of
  its most similar kept neighbour. Unlike components, a chain ``a ~ b ~ c`` with ``a`` and ``c``
  apart keeps both ``a`` and ``c``. The visit is the lexicographically first maximal independent set
  of the pair graph, computed in rounds over the stored pairs (:class:`PairStore`): each round
  decides every item whose preferred neighbours are all decided, so the number of rounds is the
  longest chain of preference inside one group, not the number of items.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["PairStore", "UnionFind", "greedy_groups"]

CHUNK = 1 << 20  # positions or pairs handled at a time


class UnionFind:
    """Disjoint sets over positions ``0..n-1``; ``path`` keeps the parent array in a file."""

    def __init__(self, n: int, path: str | os.PathLike[str] | None = None) -> None:
        self.n = int(n)
        if path is None:
            self.parent = np.arange(self.n, dtype=np.int64)
        else:
            self.parent = np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.int64, shape=(self.n,))
            for start in range(0, self.n, CHUNK):
                stop = min(start + CHUNK, self.n)
                self.parent[start:stop] = np.arange(start, stop, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        """Roots of positions ``x`` (vectorised); the paths of ``x`` are compressed."""
        x = np.asarray(x, dtype=np.int64)
        roots = self.parent[x]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[x] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the sets of ``a[i]`` and ``b[i]`` for every ``i``."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while a.size:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            # a root hit several times keeps one of the new parents; the next round joins the rest
            self.parent[np.maximum(ra, rb)] = np.minimum(ra, rb)

    def labels(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, roots)`` for consecutive chunks of every position."""
        for start in range(0, self.n, CHUNK):
            yield start, self.find(np.arange(start, min(start + CHUNK, self.n), dtype=np.int64))

    def close(self) -> None:
        """Flush a file-backed parent array."""
        if isinstance(self.parent, np.memmap):
            self.parent.flush()


class PairStore:
    """Pairs of positions and their scores appended to three flat files in ``folder``, read back
    in chunks (memory-mapped): what the greedy policy goes over once per round."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths = {name: self.folder / f"pairs.{name}" for name in ("a", "b", "score")}
        for path in self.paths.values():
            path.write_bytes(b"")
        self.count = 0

    def append(self, a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> None:
        for name, values, dtype in (("a", a, np.int64), ("b", b, np.int64), ("score", scores, np.float32)):
            with self.paths[name].open("ab") as fh:
                fh.write(np.ascontiguousarray(values, dtype=dtype).tobytes())
        self.count += len(a)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(a, b, scores)`` chunks of every stored pair."""
        if not self.count:
            return
        a = np.memmap(self.paths["a"], dtype=np.int64, mode="r", shape=(self.count,))
        b = np.memmap(self.paths["b"], dtype=np.int64, mode="r", shape=(self.count,))
        s = np.memmap(self.paths["score"], dtype=np.float32, mode="r", shape=(self.count,))
        for start in range(0, self.count, CHUNK):
            stop = start + CHUNK
            yield np.asarray(a[start:stop]), np.asarray(b[start:stop]), np.asarray(s[start:stop])


UNDECIDED, KEPT, DROPPED = 0, 1, 2


def greedy_groups(n: int, pairs: PairStore, rank: np.ndarray) -> np.ndarray:
    """``[n]`` int64: for each position, the position of the kept item whose group it is in
    (itself for a kept item that has duplicates), ``-1`` for an item without any near pair.

    ``rank[p]`` orders the preference (lower is visited first; ties must not occur, use a
    permutation). See the module docstring for the policy."""
    rank = np.asarray(rank)
    state = np.full(n, KEPT, dtype=np.int8)
    in_pairs = np.zeros(n, dtype=bool)
    for a, b, _ in pairs.chunks():
        in_pairs[a] = True
        in_pairs[b] = True
    state[in_pairs] = UNDECIDED
    while (state == UNDECIDED).any():
        blocked = np.zeros(n, dtype=bool)
        dropped = np.zeros(n, dtype=bool)
        for a, b, _ in pairs.chunks():
            first = rank[a] < rank[b]
            lo, hi = np.where(first, a, b), np.where(first, b, a)
            open_hi = state[hi] == UNDECIDED
            dropped[hi[open_hi & (state[lo] == KEPT)]] = True
            blocked[hi[open_hi & (state[lo] == UNDECIDED)]] = True
        undecided = state == UNDECIDED
        state[undecided & dropped] = DROPPED
        state[undecided & ~dropped & ~blocked] = KEPT
    group = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    for a, b, s in pairs.chunks():
        for lo, hi in ((a, b), (b, a)):  # a dropped item joins its most similar kept neighbour
            join = (state[hi] == DROPPED) & (state[lo] == KEPT)
            lo, hi, score = lo[join], hi[join], s[join]
            order = np.lexsort((score, hi))  # by item, best score last
            last = np.ones(len(hi), dtype=bool)
            last[:-1] = hi[order][1:] != hi[order][:-1]
            hi, lo, score = hi[order][last], lo[order][last], score[order][last]
            better = score > best[hi]
            group[hi[better]] = lo[better]
            best[hi[better]] = score[better]
    has_members = np.zeros(n, dtype=bool)
    has_members[group[group >= 0]] = True
    group[has_members] = np.flatnonzero(has_members)
    return group
