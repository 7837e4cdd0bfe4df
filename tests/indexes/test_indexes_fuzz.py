"""Differential fuzzer: random programs on local collections of every index kind, against a dict-and-numpy reference.

Each program (see :mod:`support.storage_fuzz`) is a few dozen operations drawn from a seed: add
(with and without metadata, with explicit ids, sometimes far apart), remove (random items, the
newest ones: often the whole unsaved buffer), remove of unknown ids, save, compact (planned or
forced), reopen writable (saving first, or discarding the unsaved changes), a read-only reader
opened beside the writer and checked again after later commits and merges, rebuild, tune, search
(no filter, ``{}``, selective, broad, empty and unknown-field filters; with and without
``refine``; 1 to 40 queries; k from 1 to 50) and get / vectors / ids. After every operation the
collection must agree with the reference; exact kinds must equal it (ties aside), ANN kinds must
return only live, matching items, k of them whenever k match, and the recall their tuning promised.

Every size at which the code changes path is set small for each program (drawn from the seed),
so that a few hundred rows cross all of them (fields of :class:`indexes.Limits`):

* search planning: ``exact_filter_max`` (0, 5 or 30: filters searched exactly or with the index),
  ``hnsw_sparse_filter`` (0, 0.05 or 0.5), ``exact_block_rows`` (7 or 64: brute force in blocks,
  live rows of blocks with removals copied), ``thread_queries`` (2 or 32; a third of the programs
  run with 2 FAISS threads, so batches are split across threads), ``filter_cache_entries`` /
  ``filter_cache_bytes`` (1 entry and 64 bytes, or the defaults: cached filter results evicted);
* memory and segments: ``buffer_bytes`` (None, 200 or 2,000: unsaved rows written as segments
  every few adds), ``segment_max_bytes`` / ``segment_min_rows`` (merges split into segments of 8
  to 40 rows), ``merge_factor`` (2 or 3), ``tier_floor`` (4 or 16), ``max_segments`` (3 or 24),
  ``deleted_fraction`` (0.1 or 0.25);
* training: ``points_per_centroid`` (1, 2 or 4: IVF and PQ train after a few dozen vectors, or not
  at all within a program for ``IVF256,Flat``), ``codes_min_train`` (20 or 50: SQ8),
  ``retrain_growth``;
* ``index="auto"``: ``flat_max`` (10, 40 or 80: the choice leaves exact search, and comes back to
  it when removals shrink the collection to a quarter), ``hnsw_max`` (30 or 300: HNSW or IVF
  first), ``tune_min`` (20 or 40: saves tune), ``tune_queries`` (20 or 50), ``retune_after_merge``;
* opening: ``verify_on_open_bytes`` (0: files checked at their ends, or whole).

``index="auto"`` keeps an index only when it beats exact search, which never happens on a few
hundred rows: in half of the ``auto`` programs the clock says the index is 100x faster (as the
auto tests do), so the kinds auto chooses (HNSW, IVF-Flat, IVF-PQ) and its fall-back to exact
search when the collection shrinks are crossed too. ``os.fsync`` is a no-op here: durability is
what the crash and fault-injection tests check; the fuzzer checks what a program sees.

The default run takes about 30 s; ``make test-slow`` runs ten times as many programs per kind.
A failure names its seed and length: ``FUZZ_SEED=<seed> FUZZ_OPS=<n> pytest
tests/indexes/test_indexes_fuzz.py -k <kind>`` replays that program alone.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexes import Collection, Limits, auto
from indexes.template import Template

from support.lexical_reference import bm25_reference, check_text_search
from support.storage_fuzz import FuzzStats, Reference, Target, make_program, random_text_query, run_program

DIM = 8
KINDS = [  # (index spec, metric): exact, graph, IVF trained and untrained, codes, IVF-PQ with refine, auto
    ("Flat", "ip"),
    ("Flat", "l2"),
    ("HNSW8", "ip"),
    ("IVF4,Flat", "l2"),
    ("IVF256,Flat", "ip"),
    ("PQ4x4", "ip"),
    ("SQ8", "l2"),
    ("IVF4,PQ4x4", "ip"),
    ("auto", "ip"),
    ("auto", "l2"),
]
PROGRAMS, OPERATIONS = 4, 40  # per kind, in the default run
SLOW_PROGRAMS, SLOW_OPERATIONS = 40, 60
SEEDS = itertools.count()


def random_limits(rng: np.random.Generator) -> Limits:
    def pick(*values: Any) -> Any:
        return values[int(rng.integers(len(values)))]

    small_cache = rng.random() < 0.5
    return Limits(
        exact_filter_max=pick(0, 5, 30),
        hnsw_sparse_filter=pick(0.0, 0.05, 0.5),
        exact_block_rows=pick(7, 64),
        thread_queries=pick(2, 32),
        filter_cache_entries=1 if small_cache else 64,
        filter_cache_bytes=64 if small_cache else 256 << 20,
        buffer_bytes=pick(None, 200, 2_000),
        segment_max_bytes=pick(8 * (DIM * 4 + 8), 40 * (DIM * 4 + 8), 2 << 30),
        segment_min_rows=pick(8, 1_024),
        merge_factor=pick(2, 3),
        tier_floor=pick(4, 16),
        max_segments=pick(3, 24),
        deleted_fraction=pick(0.1, 0.25),
        points_per_centroid=pick(1, 2, 4),
        codes_min_train=pick(20, 50),
        retrain_growth=pick(1.5, 4.0),
        flat_max=pick(10, 40, 80),
        hnsw_max=pick(30, 300),
        tune_min=pick(20, 40),
        tune_queries=pick(20, 50),
        retune_after_merge=pick(0.1, 0.25),
        verify_on_open_bytes=pick(0, 64 << 20),
        lexicon_chunk_rows=pick(2, 7, 65_536),
    )


class LocalTarget(Target):
    """A local :class:`indexes.Collection` under test, with read-only readers opened beside it."""

    name = "local"
    text = True

    def __init__(
        self, kind: str, metric: str, root: Path, limits: Limits, text_fields: list[str] | None
    ) -> None:
        super().__init__(kind, metric, DIM)
        self.root, self.limits = root, limits
        self.path = root
        self.text_fields = text_fields
        self._coll: Collection | None = None
        self.readers: list[tuple[Collection, dict[int, tuple[np.ndarray, dict]], list[str]]] = []

    def create(self) -> None:
        self.path = self.root / f"c{next(SEEDS)}"
        self._coll = Collection.create(
            self.path, DIM, metric=self.metric, index=self.kind, recall_target=0.9, limits=self.limits,
            text_fields=self.text_fields,
        )  # fmt: skip

    def coll(self) -> Collection:
        assert self._coll is not None
        return self._coll

    def reopen(self, save_first: bool) -> None:
        if save_first:
            self.coll().save()
        self.coll().close()  # unsaved changes are discarded (with a warning)
        self._coll = Collection.open(self.path, limits=self.limits)
        assert self._coll.verify().ok

    def close(self) -> None:
        for reader, _, _ in self.readers:
            reader.close()
        self.readers.clear()
        if self._coll is not None:
            self._coll.close()
            self._coll = None

    def _kind(self) -> tuple[str, bool]:
        info = self.coll().info()
        return str(info["index_kind"]), bool(info["index_trained"])

    def exact_answer(self, eligible: int | None, k: int) -> bool:
        kind, trained = self._kind()
        if kind == "flat" or not trained:
            return True  # no index (yet): every part is searched exactly
        if eligible is None:
            return False
        if eligible <= self.limits.exact_filter_max or eligible <= k:
            return True
        return kind == "hnsw" and eligible / max(len(self.coll()), 1) < self.limits.hnsw_sparse_filter

    def exact_scores(self, refine: int) -> bool:
        spec = self.coll().index_spec
        return refine > 0 or not Template(spec, DIM, self.metric).has_codes()

    def tuning(self) -> Any:
        params = self.coll().params if self.coll() is not None else {}
        return (params.get("tuned_on"), params.get("tune_seconds"), params.get("tuned_recall"))

    def promised_recall(self) -> float | None:
        coll = self.coll()
        params, target = coll.params, float(coll.info()["recall_target"])
        if self._kind()[0] == "flat" or float(params.get("tuned_recall", 0.0)) < target:
            return None  # exact search, not tuned yet, or tuning said the target is out of reach
        if set(params.get("tuned_recall_by_queries") or {}) != {"stored vectors"}:
            return None  # tuned for other queries (stored ones, or modalities searching each other)
        pairs = int(params.get("tune_queries") or self.limits.tune_queries) * int(params.get("tune_k", 10))
        return target - 3 * math.sqrt(target * (1 - target) / max(pairs, 1))

    def extra_ops(self, op: str, rng: np.random.Generator, ref: Reference, stats: FuzzStats) -> bool:
        coll = self.coll()
        if op == "compact":
            coll.compact(force=rng.random() < 0.5)
            ref.commit()
        elif op == "reader":
            for reader, snapshot, fields in self.readers:  # earlier readers still see the version they opened
                _check_reader(reader, snapshot, fields, rng)
            if self.readers and rng.random() < 0.5:
                reader, _, _ = self.readers.pop(0)
                reader.close()
            reader = Collection.open(self.path, read_only=True, limits=self.limits)
            self.readers.append((reader, dict(ref.saved[0]), list(ref.text_fields)))
            _check_reader(reader, ref.saved[0], ref.text_fields, rng)
        elif op == "repair_text":
            _damage_and_repair_a_lexicon(coll, ref, rng)
        elif op == "rebuild":
            choices = [None, "auto"] if self.kind == "auto" else [None, None, "Flat", self.kind]
            coll.rebuild(choices[int(rng.integers(len(choices)))])
        elif op == "tuning_queries":
            live = ref.ids()
            if rng.random() < 0.3 or not live:
                coll.set_tuning_queries(None)
            else:
                q = np.stack([ref.items[int(i)][0] for i in rng.choice(live, size=min(len(live), 8))])
                where = {"modality": "image"} if "modality" in ref.fields() and rng.random() < 0.5 else None
                coll.set_tuning_queries({"near stored": (q + 0.01, where)})
        elif op == "tune":
            kind, trained = self._kind()
            try:
                coll.tune(k=5)
            except ValueError as exc:
                assert "cannot tune" in str(exc) and (not trained or kind == "flat" or len(coll) <= 6), exc
        else:
            return False
        return True


def _damage_and_repair_a_lexicon(coll: Collection, ref: Reference, rng: np.random.Generator) -> None:
    """Flip bytes in one segment's lexicon file: check finds it, a repair rebuilds it from the metadata."""
    coll.save()
    ref.commit()
    with_text = [s for s in coll._segments if s.entry.get("lexical")]
    if not with_text:
        return
    seg = with_text[int(rng.integers(len(with_text)))]
    file = seg.folder / seg.entry["lexical"]["file"]
    data = bytearray(file.read_bytes())
    at = int(rng.integers(len(data)))
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))
    report = coll.verify(repair=True)
    assert not report.ok and report.repaired, report.summary()
    assert any("lexicon rebuilt" in note for note in report.notes), report.summary()
    assert coll.verify().ok


def _check_reader(
    reader: Collection,
    snapshot: dict[int, tuple[np.ndarray, dict]],
    fields: list[str],
    rng: np.random.Generator,
) -> None:
    ids = sorted(snapshot)
    assert reader.ids().tolist() == ids, "a reader sees the version it opened"
    assert reader.text_fields == fields, "a reader keeps the text index of the version it opened"
    if fields:
        queries = [random_text_query(rng) for _ in range(2)]
        scores, found = reader.search_text(queries, 10)
        metas = {i: m for i, (_, m) in snapshot.items()}
        check_text_search([bm25_reference(metas, fields, q) for q in queries], 10, scores, found)
    if ids:
        pick = sorted(rng.choice(ids, size=min(len(ids), 10), replace=False).tolist())
        assert reader.get(pick) == [snapshot[i][1] for i in pick]
        np.testing.assert_array_equal(reader.vectors(pick), np.stack([snapshot[i][0] for i in pick]))
        _, found = reader.search(snapshot[pick[0]][0], 3)
        assert np.isin(found[found >= 0], ids).all()


def _index_looks_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timings in which every index is 100x faster than exact search (exact search is timed first)."""
    calls = itertools.count()

    def timing(search: Any, sets: list[auto.QuerySet], repeats: int = 3, singles: int = 20) -> auto.Timing:
        search(sets[0].queries[:2], sets[0].where)  # the searched path still runs
        return auto.Timing(1e-3, 1e-3) if next(calls) % 2 == 0 else auto.Timing(1e-5, 1e-5)

    monkeypatch.setattr(auto, "time_search", timing)


def _run_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, metric: str, seeds: list[int], operations: int
) -> FuzzStats:
    replay = os.environ.get("FUZZ_SEED")
    seeds = [int(replay)] if replay else seeds
    operations = int(os.environ.get("FUZZ_OPS", operations))
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    total = FuzzStats()
    before = faiss.omp_get_max_threads()
    try:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            limits = random_limits(rng)
            faiss.omp_set_num_threads(2 if seed % 3 == 0 else 1)
            with monkeypatch.context() as patch:
                if kind == "auto" and seed % 2:
                    _index_looks_faster(patch)
                text_fields = [None, ["t"], ["t", "tags"], ["t", "tags"]][seed % 4]
                target = LocalTarget(kind, metric, tmp_path, limits, text_fields)
                stats = run_program(
                    target, make_program(seed, operations), seed, describe=lambda limits=limits: repr(limits)
                )
            total.add(stats)
    finally:
        faiss.omp_set_num_threads(before)
    print(total.line(f"{kind}/{metric}"))
    return total


@pytest.mark.parametrize(("kind", "metric"), KINDS, ids=[f"{k}-{m}" for k, m in KINDS])
def test_random_programs_agree_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, metric: str
) -> None:
    base = 1_000 * KINDS.index((kind, metric))
    stats = _run_kind(tmp_path, monkeypatch, kind, metric, list(range(base, base + PROGRAMS)), OPERATIONS)
    assert stats.operations >= PROGRAMS * OPERATIONS or os.environ.get("FUZZ_SEED")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "metric"), KINDS, ids=[f"{k}-{m}" for k, m in KINDS])
def test_many_random_programs_agree_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, metric: str
) -> None:
    base = 1_000 * KINDS.index((kind, metric)) + 100
    _run_kind(tmp_path, monkeypatch, kind, metric, list(range(base, base + SLOW_PROGRAMS)), SLOW_OPERATIONS)
