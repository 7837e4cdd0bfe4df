"""Tuning a Milvus collection's search parameters (``efSearch`` / ``nprobe`` / ``refine``) to its recall target.

:class:`MilvusTuning` is a base of :class:`indexes.milvus.MilvusCollection`. Exact neighbours come
from the stored vectors, streamed from the server; the query sets are those stored with
:meth:`set_tuning_queries` (kept as a collection property), else ``Limits.tune_queries`` stored
vectors. ``save()`` tunes once the count has doubled and is at least ``Limits.tune_min``.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np

from indexes import auto
from indexes.milvus.arrays import check_int

__all__ = ["MilvusTuning"]


class MilvusTuning:
    """Tuning and stored query sets (a base of :class:`indexes.milvus.MilvusCollection`)."""

    def _should_tune(self, n: int) -> bool:
        if self._index.kind == "flat" or n < self._limits.tune_min:
            return False
        return n >= 2 * int(self._state.params.get("tuned_on", 0))

    def tune(self, recall_target: float | None = None, queries: Any = None, k: int = 10) -> dict[str, Any]:
        """Tune ``nprobe`` / ``efSearch`` / ``refine`` to reach ``recall_target`` recall@k against exact search.

        Exact neighbours come from the stored vectors (streamed from the server). ``queries`` [q, d]
        are used when given; otherwise the query sets stored with :meth:`set_tuning_queries` (each
        with its filter); otherwise ``limits.tune_queries`` stored vectors, each query's own id left out.
        The chosen values are kept in :attr:`params` (and recorded when the handle is writable).
        """
        self._check_open()
        target = self._state.recall_target if recall_target is None else float(recall_target)
        if not 0 < target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], received {recall_target!r}")
        k = check_int("k", k, 1)
        n = len(self)
        if n <= k + 1:
            raise ValueError(f"cannot tune: the collection holds {n} vectors; add more than k + 1 = {k + 1}")
        stored = self._stored_queries() if queries is None else []
        if queries is not None:
            q = self._as_vectors(queries, "queries", allow_1d=False)
            sets = [auto.QuerySet("given", q, None, self_ids=np.full(q.shape[0], -2, dtype=np.int64))]
        elif stored:
            sets = [
                auto.QuerySet(s["name"], s["vectors"], s["where"], self_ids=np.full(len(s["vectors"]), -2))
                for s in stored
            ]
        else:
            pick = np.sort(
                np.random.default_rng(0).choice(
                    self.ids(), size=min(self._limits.tune_queries, n), replace=False
                )
            )
            sets = [auto.QuerySet("stored vectors", self.vectors(pick), None, self_ids=pick)]
        t0 = time.perf_counter()
        exprs = [self._compile(qs.where) or "" if qs.where else "" for qs in sets]
        for qs, expr in zip(sets, exprs):
            qs.truth = auto.drop_self(self._table.exact(qs.queries, k + 1, expr)[1], qs.self_ids, k)  # [q, k]
        exact_seconds = time.perf_counter() - t0
        by_name = {qs.name: expr for qs, expr in zip(sets, exprs)}

        def run(params: dict[str, Any], query_set: auto.QuerySet, kk: int) -> np.ndarray:
            expr = by_name.get(query_set.name, "")
            return self._ann(query_set.queries, kk, expr, params, int(params.get("refine", 0)))[1]

        kind, nlist, codes = self._index.kind, self._index.nlist, self._index.has_codes
        chosen = auto.tune(kind, nlist, codes, run, sets, k, target)
        chosen.pop("reached", None)
        params = {
            key: v for key, v in self._state.params.items() if key not in ("nprobe", "efSearch", "refine")
        }
        params.update(
            chosen,
            tuned_on=n,
            tune_queries=int(sum(qs.queries.shape[0] for qs in sets)),
            tune_query_sets=[qs.name for qs in sets],
            tune_k=k,
            exact_seconds=round(exact_seconds, 3),
        )
        if self._read_only:
            self._state = self._state.updated_with(params=params)
        else:
            self._put_state(self._state.updated_with(params=params))
        return dict(params)

    def set_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None:
        """Store query samples that :meth:`tune` (run by ``save()`` when the count has doubled) measures
        recall with, e.g. ``{"text->image": (caption_vectors, {"modality": "image"})}``; None forgets them.

        Kept with the collection on the server (at most ``limits.tune_queries`` per set), recorded at once.
        """
        self._check_open(write=True)
        if queries is None:
            self._table.put_queries(None)
            return
        if not isinstance(queries, dict) or not queries:
            raise ValueError(
                "queries must be a dict {name: (vectors [q, d], where or None)}, or None to forget them"
            )
        described = []
        for name, value in queries.items():
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(
                    f"queries[{name!r}] must be a (vectors, where) pair, received {type(value).__name__}"
                )
            q = self._as_vectors(value[0], f"queries[{name!r}]", allow_1d=False)  # [q, d]
            q = q[: self._limits.tune_queries]
            if value[1] is not None:
                self._compile(value[1])  # a bad filter fails now, not at the next save
            described.append(
                {
                    "name": str(name),
                    "where": value[1],
                    "shape": list(q.shape),
                    "vectors": base64.b64encode(np.ascontiguousarray(q, dtype="<f4").tobytes()).decode(),
                }
            )
        self._table.put_queries(json.dumps(described, separators=(",", ":")))

    def _stored_queries(self) -> list[dict[str, Any]]:
        """The query sets stored with :meth:`set_tuning_queries`: name, where, vectors [q, d]."""
        text = self._table.read_queries()
        if text is None:
            return []
        sets = []
        for d in json.loads(text):
            vectors = np.frombuffer(base64.b64decode(d["vectors"]), dtype="<f4").reshape(d["shape"])
            sets.append({"name": d["name"], "where": d["where"], "vectors": vectors.astype(np.float32)})
        return sets
