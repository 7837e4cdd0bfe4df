"""When segments are merged: a size-tiered policy with a cap on segment size and on removed rows.

Saves add small segments; left alone, their number grows with every save and searches pay a
little for each. The policy (in the spirit of Lucene's tiered merging) runs after a save has
committed, and merges

* any segment whose removed rows exceed ``DELETED_FRACTION`` of its rows (rewritten without them);
* runs of ``MERGE_FACTOR`` adjacent segments of the same size tier (tier = how many times
  ``MERGE_FACTOR`` their live rows exceed ``TIER_FLOOR``), so every row is rewritten about
  ``log_MERGE_FACTOR(n / TIER_FLOOR)`` times in its life;
* the two smallest adjacent segments, while there are more than ``MAX_SEGMENTS``.

A merge never produces a segment above ``max_rows`` (the collection's segment cap, from its memory
budget), and only adjacent segments merge, so segments keep disjoint, ascending id ranges.
Merging writes new segments and commits a new manifest; readers see the old or the new set of
segments, never a half-merged one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DELETED_FRACTION", "MAX_SEGMENTS", "MERGE_FACTOR", "TIER_FLOOR", "SegmentSize", "plan"]

DELETED_FRACTION = 0.25  # rewrite a segment once this share of its rows is removed
MERGE_FACTOR = 8  # merge this many adjacent segments of one size tier
TIER_FLOOR = 8_192  # segments with fewer live rows share the lowest tier
MAX_SEGMENTS = 24  # above this count, the smallest neighbours merge whatever their tier


@dataclass(frozen=True)
class SegmentSize:
    rows: int  # rows stored, removed ones included
    deleted: int  # rows removed

    @property
    def live(self) -> int:
        return self.rows - self.deleted

    @property
    def tier(self) -> int:
        return int(math.log(max(self.live, TIER_FLOOR) / TIER_FLOOR, MERGE_FACTOR))


def plan(sizes: Sequence[SegmentSize], max_rows: int, force: bool = False) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of segment positions to merge (each into one or more new segments).

    ``force`` merges everything into as few segments as ``max_rows`` allows and drops every
    removed row (what ``rebuild()`` does).
    """
    n = len(sizes)
    if n == 0:
        return []
    if force:
        if n == 1 and sizes[0].deleted == 0:
            return []
        return [(0, n)]
    merge = [False] * n
    for i, s in enumerate(sizes):
        if s.rows and s.deleted > DELETED_FRACTION * s.rows:
            merge[i] = True
    runs: list[tuple[int, int]] = []
    i = 0
    while i < n:  # runs of MERGE_FACTOR adjacent segments in one tier, each below the cap
        j = i
        while j < n and sizes[j].tier == sizes[i].tier and sizes[j].live < max_rows // 2:
            j += 1
        if j - i >= MERGE_FACTOR:
            for lo in range(i, j - MERGE_FACTOR + 1, MERGE_FACTOR):
                runs.append((lo, lo + MERGE_FACTOR))
            i = j
        else:
            i = max(j, i + 1)
    covered = [False] * n
    for lo, hi in runs:
        for p in range(lo, hi):
            covered[p] = True
    for i in range(n):
        if merge[i] and not covered[i]:
            runs.append((i, i + 1))
            covered[i] = True
    runs.sort()
    count = n - sum(hi - lo - 1 for lo, hi in runs)
    while count > MAX_SEGMENTS:
        best: tuple[int, int] | None = None
        best_live = math.inf
        for p in range(n - 1):
            if covered[p] or covered[p + 1]:
                continue
            live = sizes[p].live + sizes[p + 1].live
            if live < best_live and live <= max_rows:
                best, best_live = (p, p + 2), live
        if best is None:
            break
        runs.append(best)
        covered[best[0]] = covered[best[0] + 1] = True
        count -= 1
    return sorted(runs)
