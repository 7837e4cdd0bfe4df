"""``index="auto"``: choose the index by measuring candidates against exact search.

:class:`IndexChoice` is a base of :class:`indexes.collection.Collection`. The candidates come from
:func:`indexes.auto.candidates` (count, dim, memory budget, ``Limits.flat_max`` / ``hnsw_max``);
each is built, tuned to the recall target and timed against exact search, and the fastest one
that reaches the target and beats exact search both in batches and one query at a time is kept
(none: exact search). The choice is made again when the count has doubled or fallen to a quarter
since the last one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from indexes import auto
from indexes.building import IndexState

__all__ = ["GOOD_SPEEDUP", "IndexChoice"]

logger = logging.getLogger(__name__)

GOOD_SPEEDUP = 10.0  # index="auto" stops trying candidates once one is this much faster than exact search


class IndexChoice:
    """The measured choice of ``index="auto"`` (a base of :class:`indexes.collection.Collection`)."""

    def _choice_due(self, n: int) -> bool:
        decided = int((self._auto or {}).get("n", -1))
        if decided < 0:
            return n > 0 or self._template.spec != "Flat"
        return n >= 2 * decided or (n * 4 <= decided and decided > 0)

    def _choose_index(self) -> None:
        """``index="auto"``: measure candidate indexes against exact search and keep the fastest one that
        reaches the recall target, faster than exact search in batches and one query at a time; none
        qualifying means exact search (Flat). The decision is recorded in ``info()["auto"]``."""
        self._flush_buffer()
        n = len(self)
        cands = auto.candidates(n, self.dim, self._budget, self._limits)
        record: dict[str, Any] = {
            "n": n,
            "candidates": cands,
            "tried": [],
            "decided": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if cands == ["Flat"] or n <= 10 + 1:
            if self._template.spec != "Flat" or any(s.index is not None for s in self._segments):
                self._install(self._build_state("Flat", self._segments))
            record.update(chosen="Flat", reason=f"{n} vectors: exact search is fast at this size")
            self._auto = record
            self._changed()
            return
        t0 = time.perf_counter()
        target = self._recall_target
        best: tuple[IndexState, dict[str, Any], auto.Timing] | None = None
        exact_t: auto.Timing | None = None
        for spec in cands:
            if (
                best is not None
                and exact_t is not None
                and exact_t.batch / max(best[2].batch, 1e-12) >= GOOD_SPEEDUP
            ):
                break
            state = self._build_state(spec, self._segments)
            view = self._view(parts=state.segments, template=state.template, knobs={})
            if not state.template.ready:
                state.discard()
                record["tried"].append({"spec": spec, "verdict": "not enough vectors to train"})
                continue
            chosen, ann_t, exact_t, _ = self._tune_view(view, target, None, None, 10, give_up_slower=True)
            ok = (
                bool(chosen.get("reached")) and ann_t.batch < exact_t.batch and ann_t.single <= exact_t.single
            )
            verdict = (
                "kept"
                if ok
                else (
                    "recall target not reached" if not chosen.get("reached") else "slower than exact search"
                )
            )
            record["tried"].append(
                {
                    "spec": spec,
                    "build_seconds": round(state.seconds, 2),
                    "params": {key: chosen[key] for key in ("nprobe", "efSearch", "refine") if key in chosen},
                    "recall": chosen.get("tuned_recall"),
                    "recall_by_queries": chosen.get("tuned_recall_by_queries"),
                    **ann_t.as_dict(),
                    "speedup": round(exact_t.batch / max(ann_t.batch, 1e-12), 2),
                    "verdict": verdict,
                }
            )
            logger.info("auto: %s %s (%s)", spec, verdict, record["tried"][-1])
            if ok and (best is None or ann_t.batch < best[2].batch):
                if best is not None:
                    best[0].discard()
                best = (state, chosen, ann_t)
            else:
                state.discard()
        if exact_t is not None:
            record["exact"] = exact_t.as_dict()
        if best is None:
            self._install(self._build_state("Flat", self._segments))
            record.update(
                chosen="Flat",
                reason="no candidate reached the recall target faster than exact search: exact search is used",
            )
            logger.info("auto: %s falls back to exact search (%s)", self.path, record["tried"])
        else:
            state, chosen, ann_t = best
            self._install(state)
            chosen.pop("reached", None)
            self._params.update(
                chosen,
                tuned_on=n,
                ms_per_query=ann_t.as_dict(),
                exact_ms_per_query=record["exact"],
                speedup=round(exact_t.batch / max(ann_t.batch, 1e-12), 2) if exact_t else None,
            )
            record.update(chosen=state.template.spec, reason="fastest candidate reaching the recall target")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        self._auto = record
        self._changed()
