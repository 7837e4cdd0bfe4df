"""When segments are merged: a size-tiered policy with a cap on segment size and on removed rows.

Saves add small segments; left alone, their number grows with every save and searches pay a
little for each. The policy (in the spirit of Lucene's tiered merging) runs after a save has
committed, and merges

* any segment whose removed rows exceed ``deleted_fraction`` of its rows (rewritten without them),
  and any segment without rows (dropped);
* runs of ``merge_factor`` adjacent segments of the same size tier (tier = how many times
  ``merge_factor`` their live rows exceed ``tier_floor``), so every row is rewritten about
  ``log_merge_factor(n / tier_floor)`` times in its life;
* the two smallest adjacent segments, while there are more than ``max_segments``.

The four numbers are fields of :class:`indexes.limits.Limits`.

A merge never produces a segment above ``max_rows`` (the collection's segment cap, from its memory
budget), and only adjacent segments merge, so segments keep disjoint, ascending id ranges.
Merging writes new segments and commits a new manifest; readers see the old or the new set of
segments, never a half-merged one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from indexes.limits import DEFAULT_LIMITS, Limits

__all__ = ["SegmentSize", "plan", "tier"]


@dataclass(frozen=True)
class SegmentSize:
    rows: int  # rows stored, removed ones included
    deleted: int  # rows removed

    @property
    def live(self) -> int:
        return self.rows - self.deleted


def tier(size: SegmentSize, limits: Limits = DEFAULT_LIMITS) -> int:
    """Size tier of a segment: how many times ``merge_factor`` its live rows exceed ``tier_floor``."""
    floor = limits.tier_floor
    return int(math.log(max(size.live, floor) / floor, limits.merge_factor))


def plan(
    sizes: Sequence[SegmentSize], max_rows: int, force: bool = False, limits: Limits = DEFAULT_LIMITS
) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of segment positions to merge (each into one or more new segments).

    ``force`` merges everything into as few segments as ``max_rows`` allows and drops every
    removed row (what ``rebuild()`` does).
    """
    n = len(sizes)
    if n == 0:
        return []
    if force:
        if n == 1 and sizes[0].deleted == 0 and sizes[0].rows:
            return []
        return [(0, n)]
    factor = limits.merge_factor
    tiers = [tier(s, limits) for s in sizes]
    merge = [False] * n
    for i, s in enumerate(sizes):
        if s.rows == 0 or s.deleted > limits.deleted_fraction * s.rows:
            merge[i] = True  # rewritten without its removed rows (an empty segment: dropped)
    runs: list[tuple[int, int]] = []
    i = 0
    while i < n:  # runs of merge_factor adjacent segments in one tier, each below the cap
        j = i
        while j < n and tiers[j] == tiers[i] and sizes[j].live < max_rows // 2:
            j += 1
        if j - i >= factor:
            for lo in range(i, j - factor + 1, factor):
                runs.append((lo, lo + factor))
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
    while count > limits.max_segments:
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
