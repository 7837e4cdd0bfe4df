"""The results of ``where`` filters a handle has computed, kept until the next change.

A filter is compiled to SQL (:mod:`indexes.metadata`) and run on every part's metadata; its result,
a :class:`indexes.planner.Match` (the matching ids and, per part, their rows), is what the search
plan works from. Results are kept per handle, least recently used first out, bounded by
``Limits.filter_cache_entries`` and ``Limits.filter_cache_bytes``, and dropped whenever the parts
change (an add, a remove, a flush, a merge, a new index): they name rows of those parts.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from indexes.limits import Limits
from indexes.planner import Match

__all__ = ["FilterCache"]


class FilterCache:
    """Filter results by the filter's JSON text (safe to use from several search threads)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Match] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, where: dict[str, Any], compute: Callable[[], Match], limits: Limits) -> Match:
        """The result of ``where``: kept, or ``compute()`` (then kept within the limits)."""
        try:
            key: str | None = json.dumps(where, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            key = None  # not JSON-able: computed every time
        if key is not None:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
        match = compute()
        if key is not None:
            with self._lock:
                self._items[key] = match
                total = sum(m.nbytes for m in self._items.values())
                while self._items and (
                    len(self._items) > limits.filter_cache_entries or total > limits.filter_cache_bytes
                ):
                    _, old = self._items.popitem(last=False)
                    total -= old.nbytes
        return match

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
