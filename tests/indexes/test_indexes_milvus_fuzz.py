"""The differential fuzzer of ``test_indexes_fuzz.py`` against Milvus Lite, for what a Milvus collection promises.

Operations (a subset of the local fuzzer's; :mod:`support.storage_fuzz`): add (with and without
metadata; explicit ids in any order), remove (random items, the newest ones), remove of unknown
ids, save, reopen writable (saving first or not: Milvus keeps every write at once, so nothing is
discarded), rebuild, reserve_ids, search (no filter, ``{}``, selective, broad, empty and
unknown-field filters; with and without ``refine``) and get / vectors / ids. Left out, because a
Milvus collection does not offer or promise them: compaction (Milvus merges its own segments),
readers beside the writer (other handles see writes within about a second, not at once), stored
tuning queries and explicit tuning (``save()`` tunes), and ``null`` metadata values (servers before
2.4 count an explicit JSON null as present). ``fields()`` lists every field items were added with,
removed ones included, so only filters on fields never seen are refused.

Thresholds set small per program (fields of :class:`indexes.Limits`): ``flat_max`` (``auto``
leaves and comes back to exact search, rebuilding the index in ``save()``), ``tune_min`` (saves
tune), ``tune_queries``, ``exact_fill_max`` (0 or 5: rows left short by a filtered search are
answered by the widest ANN search or exactly), ``request_rows`` (3: every write, read, delete and
scan goes in several requests and pages).

Exact kinds (``Flat``) must equal the reference, ties aside; ANN kinds (HNSW, IVF-Flat, IVF-SQ8,
``auto`` once it leaves exact search) must return only live, matching items, k whenever k match,
with exact scores where the index keeps the vectors, and the recall tuning promised.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
from milvus_support import unique_name

from indexes import Limits

from support.storage_fuzz import FuzzStats, Reference, Target, make_program, run_program

DIM = 8
KINDS = [("Flat", "l2"), ("HNSW8", "ip"), ("IVF4,Flat", "l2"), ("IVF4,SQ8", "ip"), ("auto", "ip")]
PROGRAMS, OPERATIONS = 1, 25
SLOW_PROGRAMS, SLOW_OPERATIONS = 10, 40
MILVUS_OPS = {
    "add": 6,
    "remove": 3,
    "remove_buffer": 1,
    "remove_unknown": 0.3,
    "save": 2,
    "reopen": 0.8,
    "rebuild": 0.4,
    "reserve_ids": 0.2,
    "search": 10,
    "get": 2,
}


class MilvusTarget(Target):
    name = "milvus-lite"
    discards_unsaved = False  # every write reaches the server at once
    ascending_explicit_ids = False  # any new ids, in any order

    def __init__(self, kind: str, metric: str, location: str, limits: Limits) -> None:
        super().__init__(kind, metric, DIM)
        self.location, self.limits = location, limits
        self._coll: Any = None

    def create(self) -> None:
        from indexes.milvus import MilvusCollection

        self._coll = MilvusCollection.create(
            self.location, DIM, metric=self.metric, index=self.kind, recall_target=0.9, limits=self.limits
        )

    def coll(self) -> Any:
        return self._coll

    def reopen(self, save_first: bool) -> None:
        from indexes.milvus import MilvusCollection

        if save_first:
            self._coll.save()
        self._coll.close()
        self._coll = MilvusCollection.open(self.location, limits=self.limits)

    def close(self) -> None:
        if self._coll is not None:
            self._coll.close()
            self._coll = None

    def exact_answer(self, eligible: int | None, k: int) -> bool:
        return self._coll.info()["index_kind"] == "flat"

    def exact_scores(self, refine: int) -> bool:
        return refine > 0 or "SQ8" not in self._coll.index_spec

    def tuning(self) -> Any:
        params = self.coll().params if self.coll() is not None else {}
        return (params.get("tuned_on"), params.get("tune_seconds"), params.get("tuned_recall"))

    def promised_recall(self) -> float | None:
        params = self._coll.params
        target = float(self._coll.info()["recall_target"])
        if self._coll.info()["index_kind"] == "flat" or float(params.get("tuned_recall", 0.0)) < target:
            return None
        if params.get("tune_query_sets") != ["stored vectors"]:
            return None  # tuned for other queries
        pairs = int(params.get("tune_queries") or self.limits.tune_queries) * int(params.get("tune_k", 10))
        return target - 3 * math.sqrt(target * (1 - target) / max(pairs, 1))

    def extra_ops(self, op: str, rng: np.random.Generator, ref: Reference, stats: FuzzStats) -> bool:
        if op == "rebuild":
            choices = [None, "auto"] if self.kind == "auto" else [None, "Flat", self.kind]
            self._coll.rebuild(choices[int(rng.integers(len(choices)))])
            return True
        return False


def random_limits(rng: np.random.Generator) -> Limits:
    def pick(*values: Any) -> Any:
        return values[int(rng.integers(len(values)))]

    return Limits(
        flat_max=pick(10, 40),
        tune_min=pick(20, 60),
        tune_queries=pick(20, 40),
        exact_fill_max=pick(0, 5),
        request_rows=pick(3, 4_096),
    )


class _FieldsEverSeen(Reference):
    """Milvus's fields(): every field items were added with, removed items included."""

    def __init__(self, metric: str) -> None:
        super().__init__(metric)
        self.seen: set[str] = set()

    def add(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict[str, Any]]) -> None:
        super().add(ids, vectors, metas)
        for m in metas:
            self.seen.update(m)

    def fields(self) -> list[str]:
        return sorted(self.seen)


def _run(lite_db: Any, kind: str, metric: str, seeds: list[int], operations: int) -> FuzzStats:
    replay = os.environ.get("FUZZ_SEED")
    seeds = [int(replay)] if replay else seeds
    operations = int(os.environ.get("FUZZ_OPS", operations))
    total = FuzzStats()
    for seed in seeds:
        limits = random_limits(np.random.default_rng(seed))
        target = MilvusTarget(kind, metric, f"milvus-lite://{lite_db}/{unique_name('fz')}", limits)
        stats = run_program(
            target,
            make_program(seed, operations, MILVUS_OPS),
            seed,
            allow_null=False,
            describe=lambda limits=limits: repr(limits),
            reference=_FieldsEverSeen,
        )
        total.add(stats)
    print(total.line(f"milvus-lite {kind}/{metric}"))
    return total


@pytest.mark.parametrize(("kind", "metric"), KINDS, ids=[f"{k}-{m}" for k, m in KINDS])
def test_random_programs_on_milvus_lite_agree_with_the_reference(
    lite_db: Any, kind: str, metric: str
) -> None:
    base = 50_000 + 1_000 * KINDS.index((kind, metric))
    _run(lite_db, kind, metric, list(range(base, base + PROGRAMS)), OPERATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "metric"), KINDS, ids=[f"{k}-{m}" for k, m in KINDS])
def test_many_random_programs_on_milvus_lite_agree_with_the_reference(
    lite_db: Any, kind: str, metric: str
) -> None:
    base = 50_000 + 1_000 * KINDS.index((kind, metric)) + 100
    _run(lite_db, kind, metric, list(range(base, base + SLOW_PROGRAMS)), SLOW_OPERATIONS)
