"""The index of a Milvus collection: which kind ``index="auto"`` calls for, rebuilding it, waiting for it.

:class:`MilvusIndexing` is a base of :class:`indexes.milvus.MilvusCollection`. ``auto`` asks
:func:`indexes.milvus.kinds.choose` (with the handle's ``Limits.flat_max`` / ``hnsw_max``) and
rebuilds when another kind suits a count that doubled or fell to a quarter since the last build.
"""

from __future__ import annotations

import logging
import time

from indexes.milvus import kinds

__all__ = ["INDEX_WAIT", "MilvusIndexing"]

logger = logging.getLogger(__name__)

INDEX_WAIT = 3_600.0  # seconds save() / rebuild() wait for Milvus to finish building the index


class MilvusIndexing:
    """Index choice and rebuilds (a base of :class:`indexes.milvus.MilvusCollection`)."""

    @property
    def needs_rebuild(self) -> bool:
        """True when ``index="auto"`` now calls for another index kind (``save()`` then rebuilds)."""
        return self._rebuild_reason(len(self)) is not None

    def _rebuild_reason(self, n: int) -> str | None:
        if self._state.index_requested != "auto":
            return None
        want = kinds.choose(n, self.dim, self._state.memory_budget, self._client.lite, self._limits)
        built_on = int(self._state.params.get("built_on", 0))
        if want.spec != self.index_spec and (n >= 2 * built_on or n * 4 <= built_on):
            return f"{want.spec} suits {n} vectors better than {self.index_spec}"
        return None

    def wait_for_index(self, timeout: float = INDEX_WAIT) -> float:
        """Wait until Milvus has indexed every flushed row; returns the seconds waited."""
        self._check_open()
        return self._table.wait_for_index(self._index.index_type, timeout)

    def rebuild(self, index: str | None = None) -> None:
        """Rebuild the index (``index``: another factory string or ``"auto"``; None keeps the requested one).

        The collection is released while Milvus builds the new index: searches fail meanwhile.
        """
        self._check_open(write=True)
        requested = self._state.index_requested if index is None else index.strip()
        self._table.flush()
        n = len(self)
        lite = self._client.lite
        if requested == "auto":
            new = kinds.choose(n, self.dim, self._state.memory_budget, lite, self._limits)
        else:
            new = kinds.translate(requested, self.dim, lite)
        t0 = time.perf_counter()
        self._table.replace_index(self._index, new, INDEX_WAIT)
        self._index = new
        seconds = time.perf_counter() - t0
        params = {"built_on": n, "build_seconds": round(seconds, 3)}
        self._put_state(
            self._state.updated_with(index_requested=str(requested), index_spec=new.spec, params=params)
        )
        logger.info("built %s (%s) over %d vectors in %.1fs", new.spec, new.index_type, n, seconds)
        if self._should_tune(n):
            self.tune()
