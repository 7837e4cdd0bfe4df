"""Tuning search parameters (``nprobe``, ``efSearch``, ``refine``) to the recall target, on the queries
the collection is searched with.

:class:`Tuning` is a base of :class:`indexes.collection.Collection`. The query sets it measures with
come from :meth:`Collection.set_tuning_queries`, else from the ``modality`` values the items carry
(each modality's vectors as queries for the others), else from stored vectors; :func:`indexes.auto.tune`
walks the knobs. Saves tune once the count has doubled since the last tuning and is at least
``Limits.tune_min``; merges that rewrote ``Limits.retune_after_merge`` of the rows re-tune.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from typing import Any

import numpy as np

from indexes import auto, checks, files, metadata, planner
from indexes.files import DamagedFileError
from indexes.template import Template

__all__ = ["MODALITY_FIELD", "Tuning"]

logger = logging.getLogger(__name__)

MODALITY_FIELD = "modality"  # items carrying several values of it are tuned across them (text->image, ...)


class Tuning:
    """Tuning to the recall target (a base of :class:`indexes.collection.Collection`)."""

    def tune(
        self,
        recall_target: float | None = None,
        queries: Any = None,
        k: int = 10,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Tune ``nprobe`` / ``efSearch`` / ``refine`` to reach ``recall_target`` recall@k against exact search.

        ``queries`` [q, d] (with an optional ``where`` filter they are sent with) are used when given;
        otherwise the query sample stored with :meth:`set_tuning_queries`; otherwise, in a collection
        holding several ``modality`` values (images and captions), each modality's vectors as queries
        for the others; otherwise a sample of stored vectors (each query's own id left out). The
        recall reached per query set, the time per query and exact search's time on the same
        queries are kept in :attr:`params` and the manifest.
        """
        self._check_open()
        return self._tune_now(recall_target, queries, k, where)

    def set_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None:
        """Store query samples that tuning and ``index="auto"`` measure with, e.g.
        ``{"text->image": (caption_vectors, {"modality": "image"})}``; None forgets them.
        Written by the next save (at most 1,000 queries per set are kept)."""
        self._check_open(write=True)
        self._store_tuning_queries(queries)

    def _should_tune(self) -> bool:
        n = len(self)
        if not self._template.ready or n < self._limits.tune_min:
            return False
        return n >= 2 * int(self._params.get("tuned_on", 0))

    def _tunable(self) -> bool:
        return self._template.ready and len(self) >= self._limits.tune_min

    def _query_sets(
        self, queries: Any = None, where: dict[str, Any] | None = None, k: int = 10
    ) -> list[auto.QuerySet]:
        """The queries tuning measures with (see :meth:`Collection.tune`), with exact neighbours filled in."""
        rng = np.random.default_rng(0)
        parts = self._parts()
        size = self._limits.tune_queries
        sets: list[auto.QuerySet] = []
        if queries is not None:
            q = self._as_vectors(queries, "queries", allow_1d=False)
            sets = [auto.QuerySet("given", q, where)]
        elif self._queries_record:
            sets = self._load_queries()
        else:
            values = self._modality_values()
            if len(values) >= 2:
                for value in values:
                    match = self._match({MODALITY_FIELD: value}, parts)
                    if match.ids.size == 0:
                        continue
                    pick = np.sort(rng.choice(match.ids, size=min(size, match.ids.size), replace=False))
                    others = [v for v in values if v != value]
                    target: Any = others[0] if len(others) == 1 else {"ne": value}
                    sets.append(
                        auto.QuerySet(
                            f"{value}->{others[0] if len(others) == 1 else 'others'}",
                            planner.gather(parts, pick),
                            {MODALITY_FIELD: target},
                        )
                    )
            if not sets:
                ids = self.ids()
                pick = np.sort(rng.choice(ids, size=min(size, ids.size), replace=False))
                sets = [auto.QuerySet("stored vectors", planner.gather(parts, pick), None, self_ids=pick)]
        exact_view = self._view(template=Template("Flat", self.dim, self.metric))
        for qs in sets:
            _, found = self._search(qs.queries, k + 1, qs.where, 0, exact_view)
            self_ids = qs.self_ids if qs.self_ids is not None else np.full(qs.queries.shape[0], -2)
            qs.truth = auto.drop_self(found, self_ids, k)
        return sets

    def _modality_values(self) -> list[Any]:
        if MODALITY_FIELD not in self.fields():
            return []
        values: set[Any] = set()
        for part in self._parts():
            values.update(part.meta.distinct(MODALITY_FIELD, limit=8))
        return sorted(v for v in values if isinstance(v, (str, int)) and not isinstance(v, bool))

    def _store_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None:
        if queries is None:
            self._queries_record = None
            self._changed()
            return
        if not isinstance(queries, dict) or not queries:
            raise ValueError(
                "queries must be a dict {name: (vectors [q, d], where or None)}, or None to forget them"
            )
        arrays: dict[str, np.ndarray] = {}
        described = []
        for i, (name, value) in enumerate(queries.items()):
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(
                    f"queries[{name!r}] must be a (vectors, where) pair, received {type(value).__name__}"
                )
            q = self._as_vectors(value[0], f"queries[{name!r}]", allow_1d=False)[
                : 5 * self._limits.tune_queries
            ]
            if value[1] is not None:
                metadata.compile_where(
                    value[1], self.fields()
                )  # a bad filter fails now, not at the next save
            arrays[f"q{i}"] = q
            described.append({"name": str(name), "where": value[1]})

        buf = io.BytesIO()
        np.savez(buf, names=np.array(json.dumps(described)), **arrays)
        name = f"q{self._generation():06d}-{secrets.token_hex(4)}.npz"
        path = self.path / name
        digest = files.write_bytes(path, buf.getvalue())
        self._pending.add(path)
        self._queries_record = {"file": name, "digest": digest, "sets": [d["name"] for d in described]}
        self._changed()

    def _load_queries(self) -> list[auto.QuerySet]:

        record = self._queries_record
        assert record is not None
        path = self.path / record["file"]
        bad = files.verify_file(path, record.get("digest"))
        if bad:
            raise DamagedFileError(path, files.describe_damage(bad))
        with np.load(path, allow_pickle=False) as data:
            described = json.loads(str(data["names"]))
            return [
                auto.QuerySet(d["name"], data[f"q{i}"][: self._limits.tune_queries], d["where"])
                for i, d in enumerate(described)
            ]

    def _tune_now(
        self,
        recall_target: float | None = None,
        queries: Any = None,
        k: int = 10,
        where: dict[str, Any] | None = None,
        view: planner.View | None = None,
    ) -> dict[str, Any]:
        target = self._recall_target if recall_target is None else float(recall_target)
        if not 0 < target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], received {recall_target!r}")
        k = checks.check_int("k", k, 1)
        if not self._template.ready or len(self) <= k + 1:
            raise ValueError(
                f"cannot tune: the collection holds {len(self)} vectors and its index is not trained yet"
            )
        chosen, ann_t, exact_t, sets = self._tune_view(
            self._view() if view is None else view, target, queries, where, k
        )
        for key in ("nprobe", "efSearch", "refine"):
            self._params.pop(key, None)
        chosen.pop("reached", None)
        self._params.update(
            chosen,
            tuned_on=len(self),
            tune_queries=int(sum(qs.queries.shape[0] for qs in sets)),
            tune_k=k,
            ms_per_query=ann_t.as_dict(),
            exact_ms_per_query=exact_t.as_dict(),
            speedup=round(exact_t.batch / max(ann_t.batch, 1e-12), 2),
        )
        if ann_t.batch >= exact_t.batch and self._template.kind != "flat":
            (logger.warning if len(self) > self._limits.flat_max else logger.info)(
                "%s tuned to recall %.3f takes %.3f ms per query, exact search %.3f ms: index='Flat' (or 'auto', "
                "which falls back to exact search) would be faster on %s",
                self._template.spec,
                chosen.get("tuned_recall", 0.0),
                ann_t.batch * 1e3,
                exact_t.batch * 1e3,
                self.path,
            )
        if not self._read_only:
            self._dirty = True
        return dict(self._params)

    def _tune_view(
        self,
        view: planner.View,
        target: float,
        queries: Any,
        where: dict[str, Any] | None,
        k: int,
        give_up_slower: bool = False,
    ) -> tuple[dict[str, Any], auto.Timing, auto.Timing, list[auto.QuerySet]]:
        """Tune ``view``'s index; ``give_up_slower`` stops walking a knob once it is slower than exact search
        (what ``auto`` does: such an index is dropped anyway)."""
        sets = self._query_sets(queries, where, k)
        exact_view = self._view(parts=view.parts, template=Template("Flat", self.dim, self.metric))
        exact_t = auto.time_search(lambda q, w: self._search(q, k, w, 0, exact_view), sets)

        def run(params: dict[str, Any], qs: auto.QuerySet, kk: int) -> np.ndarray:
            v = self._view(parts=view.parts, template=view.template, knobs=params)
            return self._search(qs.queries, kk, qs.where, int(params.get("refine", 0)), v)[1]

        template = view.template
        limit = exact_t.batch if give_up_slower else None
        chosen = auto.tune(template.kind, template.nlist, template.has_codes(), run, sets, k, target, limit)
        knobs = {key: chosen[key] for key in ("nprobe", "efSearch", "refine") if key in chosen}
        tuned_view = self._view(parts=view.parts, template=template, knobs=knobs)
        refine = int(knobs.get("refine", 0))
        ann_t = auto.time_search(lambda q, w: self._search(q, k, w, refine, tuned_view), sets)
        return chosen, ann_t, exact_t, sets
