"""Differential fuzzing of collections: random programs run against a collection and a dict-and-numpy reference.

The reference (:class:`Reference`) is what a collection promises, written the slow and obvious
way: a dict id -> (vector, metadata), the ``where`` semantics of :mod:`indexes.metadata` as Python
predicates, brute-force search in float64. A program is a list of operations drawn from a seed
(:func:`make_program`); :func:`run_program` applies each to a *target* (a backend adapter: the
local :class:`indexes.Collection` in ``tests/indexes/test_indexes_fuzz.py``, Milvus Lite in
``test_indexes_milvus_fuzz.py``) and to the reference, and checks after every step that they agree.

What "agree" means (:func:`check_search`):

* every kind: each row holds ``min(k, matching items)`` distinct live ids that match the filter,
  best first, padded with id -1 / score -inf; a filter on a field no live item carries is refused;
* exact answers (Flat, untrained IVF / PQ, filters the planner answers exactly): the scores equal
  the reference's top-k scores, and each id's score is its exact score; ties may come back in any
  order (the comparison is on scores, as faiss ``contrib`` compares results);
* ANN answers: scores of kinds that store exact vectors (or are refined) are the ids' exact
  scores; recall@k is summed per program and checked against the recall the tuning promised.

Targets with a text index (``Target.text``: the local collection) get items with text fields
(``t``: words in various cases, with and without diacritics, separated by spaces and punctuation,
sometimes a number; ``tags``: a list of words) and three more operations: ``search_text`` (BM25 over
some or all of the text fields, with the same filters; checked against
:func:`support.lexical_reference.bm25_reference`: the same ids, and each its score, whatever the
segmenting), ``text_fields`` (the indexed fields change, or the index is dropped and declared
again) and, through the target, damage to a lexicon file repaired by ``verify(repair=True)``.

A failure raises :class:`FuzzFailure` naming the seed, the operation and the whole program, so
``FUZZ_SEED=<seed> FUZZ_OPS=<length>`` replays it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from support.lexical_reference import bm25_reference, check_text_search

__all__ = [
    "FuzzFailure",
    "FuzzStats",
    "Reference",
    "Target",
    "check_search",
    "make_program",
    "matches",
    "run_program",
]

ODD_FIELD = "a\\b"  # a field name with a backslash: its JSON path needs escaping
ATOL, RTOL = 2e-3, 1e-4  # float32 scores against float64 ones


class FuzzFailure(AssertionError):
    """A program's step disagreed with the reference (the message says how to replay it)."""


@dataclass
class FuzzStats:
    """What the fuzzer ran: programs, operations, and the searches checked (exact or ANN)."""

    programs: int = 0
    operations: int = 0
    searches_exact: int = 0
    searches_ann: int = 0
    ann_hits: float = 0.0  # tie-tolerant hits of every ANN search
    ann_wanted: int = 0
    promised_hits: float = 0.0  # ... of the searches tuning speaks for (no filter, stored vectors, k <= 10,
    promised_wanted: int = 0  #     the collection changed by at most a tenth since it was tuned)
    promised_expected: float = 0.0  # sum of wanted * the recall promised at the time of each search
    by_op: dict[str, int] = field(default_factory=dict)

    def add(self, other: FuzzStats) -> None:
        self.programs += other.programs
        self.operations += other.operations
        self.searches_exact += other.searches_exact
        self.searches_ann += other.searches_ann
        self.ann_hits += other.ann_hits
        self.ann_wanted += other.ann_wanted
        self.promised_hits += other.promised_hits
        self.promised_wanted += other.promised_wanted
        self.promised_expected += other.promised_expected
        for k, v in other.by_op.items():
            self.by_op[k] = self.by_op.get(k, 0) + v

    def line(self, name: str) -> str:
        recall = f", ANN recall {self.ann_hits / self.ann_wanted:.3f}" if self.ann_wanted else ""
        if self.promised_wanted:
            recall += f" ({self.promised_hits / self.promised_wanted:.3f} where tuning promised it)"
        return (
            f"fuzz {name}: {self.programs} programs, {self.operations} operations, "
            f"{self.searches_exact} exact and {self.searches_ann} ANN searches checked{recall}"
        )


# ---------------------------------------------------------------------------------------------- reference
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(a: Any, b: Any) -> bool:
    """SQLite's comparison of a JSON value with a bound parameter (booleans read back as 0 / 1)."""
    a = int(a) if isinstance(a, bool) else a
    b = int(b) if isinstance(b, bool) else b
    if _number(a) and _number(b):
        return a == b
    return type(a) is type(b) and a == b


def _clause(meta: dict[str, Any], name: str, op: str, value: Any) -> bool:
    present = name in meta and meta[name] is not None
    v = meta.get(name)
    if op == "in":
        return any((x is None and not present) or (x is not None and present and _eq(v, x)) for x in value)
    if op == "eq":
        return not present if value is None else present and _eq(v, value)
    if op == "ne":
        return present if value is None else present and not _eq(v, value)
    if not present:
        return False
    if isinstance(value, str):
        if not isinstance(v, str):
            return False
    elif not _number(v):
        return False
    return {"gt": v > value, "gte": v >= value, "lt": v < value, "lte": v <= value}[op]


def matches(meta: dict[str, Any], where: dict[str, Any] | None) -> bool:
    """Whether an item with ``meta`` passes ``where`` (the semantics of :mod:`indexes.metadata`)."""
    if not where:
        return True
    for name, cond in where.items():
        if isinstance(cond, dict):
            ops = list(cond.items())
        elif isinstance(cond, (list, tuple)):
            ops = [("in", list(cond))]
        else:
            ops = [("eq", cond)]
        if not all(_clause(meta, name, op, value) for op, value in ops):
            return False
    return True


class Reference:
    """What the collection must hold: id -> (vector float32 [d], metadata), the next id, the saved state."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.items: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        self.next_id = 0
        self.saved: tuple[dict[int, tuple[np.ndarray, dict[str, Any]]], int] = ({}, 0)
        self.changes_since_tuning = 0  # items added or removed since the search parameters were tuned
        self.text_fields: list[str] = []  # the fields of the text index (committed at once when changed)

    def add(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict[str, Any]]) -> None:
        for i, v, m in zip(ids.tolist(), vectors, metas):
            assert i not in self.items
            self.items[int(i)] = (np.asarray(v, dtype=np.float32), m)
        if len(ids):
            self.next_id = max(self.next_id, int(ids.max()) + 1)
        self.changes_since_tuning += len(ids)

    def remove(self, ids: list[int]) -> None:
        for i in ids:
            del self.items[i]
        self.changes_since_tuning += len(ids)

    def commit(self) -> None:
        self.saved = (dict(self.items), self.next_id)

    def rollback(self) -> None:
        self.items, self.next_id = dict(self.saved[0]), self.saved[1]

    def ids(self) -> list[int]:
        return sorted(self.items)

    def fields(self) -> list[str]:
        return sorted({k for _, m in self.items.values() for k in m})

    def matching(self, where: dict[str, Any] | None) -> np.ndarray:
        return np.array([i for i in self.ids() if matches(self.items[i][1], where)], dtype=np.int64)

    def text_scores(
        self, query: str, fields: list[str] | None, where: dict[str, Any] | None
    ) -> dict[int, float]:
        """id -> reference BM25 score of the items ``where`` admits that hold a word of ``query``."""
        metas = {i: m for i, (_, m) in self.items.items()}
        return bm25_reference(metas, fields or self.text_fields, query, lambda meta: matches(meta, where))

    def scores(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact float64 scores [n, m] of ``q`` [n, d] against ``ids`` [m] (higher is better)."""
        if ids.size == 0:
            return np.zeros((q.shape[0], 0))
        base = np.stack([self.items[int(i)][0] for i in ids]).astype(np.float64)  # [m, d]
        qq = q.astype(np.float64)
        if self.metric == "ip":
            return qq @ base.T
        return -((qq[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)


# ---------------------------------------------------------------------------------------------- programs
OPS: dict[str, float] = {  # operation -> weight
    "add": 6,
    "remove": 3,
    "remove_buffer": 1,
    "remove_unknown": 0.3,
    "save": 2,
    "compact": 0.8,
    "reopen": 0.8,
    "reader": 0.8,
    "rebuild": 0.4,
    "tune": 0.4,
    "tuning_queries": 0.3,
    "reserve_ids": 0.2,
    "search": 10,
    "get": 2,
    "search_text": 4,  # targets with a text index only (Target.text)
    "text_fields": 0.3,
    "repair_text": 0.2,  # through Target.extra_ops
}

# Words of the text fields: accents, case and separators vary; "cafe" / "Café" / "CAFÉ" are one word.
TEXT_WORDS = [
    "red", "Red", "bike", "bikes", "café", "cafe", "CAFÉ", "naïve", "naive", "über", "sku", "4411", "B",
    "ångström", "zebra", "élan", "elan", "data", "x9", "東京", "λόγος", "crème", "the", "a", "of",
]  # fmt: skip
TEXT_SEPARATORS = [" ", " ", "-", ", ", "/", "_", ". ", "\n", "(", ") "]


def make_program(seed: int, n_ops: int, ops: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """``n_ops`` operations drawn from ``seed`` (each with its own seed for the data it draws)."""
    weights = ops or OPS
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    program = [{"op": "add", "seed": int(rng.integers(2**31))}]
    for _ in range(n_ops - 1):
        program.append(
            {"op": names[int(rng.choice(len(names), p=p / p.sum()))], "seed": int(rng.integers(2**31))}
        )
    return program


def random_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Vectors of three flavours: small integers (many exact ties), clustered unit vectors, raw gaussians."""
    mode = int(rng.integers(3))
    if mode == 0:
        return rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    centres = rng.standard_normal((4, dim))
    x = centres[rng.integers(0, 4, n)] + 0.4 * rng.standard_normal((n, dim))
    if mode == 1:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    return x.astype(np.float32)


def random_meta(rng: np.random.Generator, allow_null: bool, odd_names: bool) -> dict[str, Any]:
    if rng.random() < 0.15:
        return {}
    meta: dict[str, Any] = {}
    if rng.random() < 0.85:
        meta["g"] = int(rng.integers(0, 5)) if rng.random() < 0.95 else "3"  # a string among the numbers
    if rng.random() < 0.7:
        meta["s"] = ["a", "b", "c"][int(rng.integers(3))]
    if rng.random() < 0.6:
        meta["f"] = round(float(rng.random()), 2)
    if rng.random() < 0.3:
        meta["b"] = bool(rng.integers(2))
    if allow_null and rng.random() < 0.2:
        meta["opt"] = None if rng.random() < 0.5 else 1
    if odd_names and rng.random() < 0.2:
        meta[ODD_FIELD] = int(rng.integers(2))
    if rng.random() < 0.3:  # items of two modalities: tuning measures each against the other
        meta["modality"] = "image" if rng.random() < 0.6 else "text"
    return meta


def random_text(rng: np.random.Generator, words: int) -> str:
    parts = []
    for i in range(words):
        if i:
            parts.append(TEXT_SEPARATORS[int(rng.integers(len(TEXT_SEPARATORS)))])
        parts.append(TEXT_WORDS[int(rng.integers(len(TEXT_WORDS)))])
    return "".join(parts)


def add_text(rng: np.random.Generator, meta: dict[str, Any]) -> dict[str, Any]:
    """The item with text fields: ``t`` (words, sometimes a number), ``tags`` (a list of words)."""
    if rng.random() < 0.8:
        meta["t"] = (
            random_text(rng, int(rng.integers(0, 7))) if rng.random() < 0.9 else int(rng.integers(4400, 4420))
        )
    if rng.random() < 0.5:
        meta["tags"] = [random_text(rng, 1) for _ in range(int(rng.integers(0, 4)))]
    return meta


def random_text_query(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.05:
        return " -- ,, "  # no word at all
    if kind < 0.1:
        return "unseen " + random_text(rng, 1)
    if kind < 0.15:
        return f'NOT {random_text(rng, 1)} OR "{random_text(rng, 1)}" t:x*'  # FTS5 syntax is read as words
    return random_text(rng, int(rng.integers(1, 4)))


def random_where(rng: np.random.Generator, allow_null: bool, odd_names: bool) -> tuple[str, Any]:
    """(kind, where): none, selective, broad, empty or unknown filters."""
    kind = ["none", "none", "selective", "selective", "broad", "broad", "empty", "unknown"][
        int(rng.integers(8))
    ]
    g, s = int(rng.integers(0, 5)), ["a", "b", "c"][int(rng.integers(3))]
    if kind == "none":
        return kind, None if rng.random() < 0.8 else {}
    if kind == "selective":
        options = [
            {"g": g, "s": s},
            {"f": {"gte": 0.85}},
            {"g": g, "f": {"lt": 0.5}},
            {"s": s, "b": True},
            {"g": {"in": [g, "3"]}},
        ]
        if odd_names:
            options.append({ODD_FIELD: 1, "g": g})
        return kind, options[int(rng.integers(len(options)))]
    if kind == "broad":
        options = [
            {"g": {"ne": g}},
            {"s": ["a", "b"]},
            {"f": {"gte": 0.1}},
            {"g": {"gte": 1, "lte": 4}},
            {"s": {"gt": "a"}},
        ]
        if allow_null:
            options.append({"opt": None})
        return kind, options[int(rng.integers(len(options)))]
    if kind == "empty":
        return kind, {"g": 99}
    return kind, {"nope": 1}


# ---------------------------------------------------------------------------------------------- targets
class Target:
    """A backend under test; subclasses map operations onto it and say what it promises."""

    name = "target"
    discards_unsaved = True  # reopening without saving loses the changes since the last save
    ascending_explicit_ids = True  # explicit ids must be above every id handed out so far
    text = False  # items carry text fields and the collection indexes them (search_text, set_text_fields)

    def __init__(self, kind: str, metric: str, dim: int) -> None:
        self.kind, self.metric, self.dim = kind, metric, dim

    # what every target implements
    def create(self) -> None: ...
    def coll(self) -> Any: ...
    def reopen(self, save_first: bool) -> None: ...
    def close(self) -> None: ...
    def exact_answer(self, eligible: int | None, k: int) -> bool: ...
    def exact_scores(self, refine: int) -> bool: ...
    def promised_recall(self) -> float | None:
        """The recall@k (k <= 10) that tuning promised on stored vectors as queries, less the error of its
        sample; None when nothing was promised."""

    def tuning(self) -> Any:
        """Something that changes whenever the search parameters are tuned again (None: never tuned)."""
        return None

    def extra_ops(self, op: str, rng: np.random.Generator, ref: Reference, stats: FuzzStats) -> bool:
        return False


# ---------------------------------------------------------------------------------------------- checks
def check_search(
    ref: Reference,
    q: np.ndarray,
    k: int,
    where: dict[str, Any] | None,
    scores: np.ndarray,
    ids: np.ndarray,
    exact: bool,
    exact_scores: bool,
    stats: FuzzStats,
    promised: float | None = None,
) -> None:
    n = q.shape[0]
    assert scores.shape == ids.shape == (n, k), (scores.shape, ids.shape, (n, k))
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    eligible = ref.matching(where)
    want = min(k, eligible.size)
    found = (ids >= 0).sum(axis=1)
    assert (found == want).all(), (
        f"rows hold {found.tolist()} ids, {want} items qualify ({eligible.size} match)"
    )
    assert (ids[:, want:] == -1).all() and np.isneginf(scores[:, want:]).all(), "padding is -1 / -inf"
    if want == 0:
        return
    got = ids[:, :want]
    assert np.isin(got, eligible).all(), (
        f"ids {np.setdiff1d(got, eligible)[:5].tolist()} are removed or do not match"
    )
    for r in range(n):
        assert np.unique(got[r]).size == want, f"row {r} repeats ids: {got[r].tolist()}"
    assert (np.diff(scores[:, :want], axis=1) <= 1e-5).all(), "scores come best first"
    truth = ref.scores(q, eligible)  # [n, m]
    top = -np.sort(-truth, axis=1)[:, :want]  # [n, want]
    pos = np.searchsorted(eligible, got)
    own = np.take_along_axis(truth, pos, axis=1)  # exact score of each returned id
    if exact or exact_scores:
        np.testing.assert_allclose(
            scores[:, :want], own, rtol=RTOL, atol=ATOL, err_msg="score of the returned id"
        )
    if exact:
        np.testing.assert_allclose(
            scores[:, :want], top, rtol=RTOL, atol=ATOL, err_msg="top-k scores (ties aside)"
        )
        stats.searches_exact += 1
    else:
        kth = top[:, -1:] - (ATOL + RTOL * np.abs(top[:, -1:]))
        hits = float((own >= kth).sum())  # tie-tolerant recall: as good as the k-th best counts
        stats.ann_hits += hits
        stats.ann_wanted += n * want
        stats.searches_ann += 1
        if promised is not None:
            stats.promised_hits += hits
            stats.promised_wanted += n * want
            stats.promised_expected += n * want * promised


def _check_state(ref: Reference, coll: Any, rng: np.random.Generator, full: bool) -> None:
    assert len(coll) == len(ref.items), f"len {len(coll)}, reference {len(ref.items)}"
    if full:
        assert coll.ids().tolist() == ref.ids(), "ids()"
        assert coll.fields() == ref.fields(), f"fields() {coll.fields()} != {ref.fields()}"
    live = ref.ids()
    if live:
        pick = sorted(rng.choice(live, size=min(len(live), 12), replace=False).tolist())
        assert coll.get(pick) == [ref.items[i][1] for i in pick], "get()"
        np.testing.assert_array_equal(coll.vectors(pick), np.stack([ref.items[i][0] for i in pick]))


# ---------------------------------------------------------------------------------------------- running
def run_program(
    target: Target,
    program: list[dict[str, Any]],
    seed: int,
    allow_null: bool = True,
    odd_names: bool = True,
    describe: Callable[[], str] = lambda: "",
    reference: Callable[[str], Reference] = Reference,
) -> FuzzStats:
    """Run ``program`` on ``target`` and a :class:`Reference`; raises :class:`FuzzFailure` on disagreement."""
    stats = FuzzStats(programs=1)
    ref = reference(target.metric)
    target.create()
    if target.text:
        ref.text_fields = list(target.coll().text_fields)
    ref.commit()
    step = -1
    tuned: Any = None
    try:
        for step, op in enumerate(program):
            rng = np.random.default_rng(op["seed"])
            _apply(target, op["op"], rng, ref, stats, allow_null, odd_names)
            if target.tuning() != tuned:  # tuned again: the promise is about the collection as it is now
                tuned, ref.changes_since_tuning = target.tuning(), 0
            stats.operations += 1
            stats.by_op[op["op"]] = stats.by_op.get(op["op"], 0) + 1
            _check_state(ref, target.coll(), rng, full=step % 5 == 4 or op["op"] in ("reopen", "compact"))
        _check_state(ref, target.coll(), np.random.default_rng(seed), full=True)
        if stats.promised_wanted >= 100:
            got = stats.promised_hits / stats.promised_wanted
            recall = stats.promised_expected / stats.promised_wanted
            floor = recall - 3 * math.sqrt(
                recall * (1 - recall) / stats.promised_wanted
            )  # the program's sample
            assert got >= floor, (
                f"ANN recall {got:.3f} over the program, {recall:.3f} promised (floor {floor:.3f})"
            )
    except Exception as exc:
        shown = json.dumps([o["op"] for o in program])
        where = f"operation #{step} {program[step] if 0 <= step < len(program) else ''}"
        raise FuzzFailure(
            f"{target.name} {target.kind}/{target.metric} seed {seed}: {where} failed: "
            f"{type(exc).__name__}: {exc}\n  {describe()}\n  program: {shown}\n  replay: FUZZ_SEED={seed} FUZZ_OPS={len(program)}"
        ) from exc
    finally:
        target.close()
    return stats


def _apply(
    target: Target,
    op: str,
    rng: np.random.Generator,
    ref: Reference,
    stats: FuzzStats,
    allow_null: bool,
    odd_names: bool,
) -> None:
    coll = target.coll()
    if op == "add":
        n = int(rng.choice([0, 1, 3, 7, 20, 45]))
        x = random_vectors(rng, n, target.dim)
        metas = [random_meta(rng, allow_null, odd_names) for _ in range(n)]
        if target.text:
            metas = [add_text(rng, m) for m in metas]
        with_meta = rng.random() < 0.8
        if rng.random() < 0.3 and n:
            gaps = rng.integers(1, 4, n)
            if rng.random() < 0.1:
                gaps[0] += 10**12  # a far jump in the id space
            ids = (ref.next_id - 1 + np.cumsum(gaps)).astype(np.int64)
            if not target.ascending_explicit_ids:
                ids = rng.permutation(ids)
            got = coll.add(x, metas if with_meta else None, ids=ids)
            np.testing.assert_array_equal(got, ids)
        else:
            got = coll.add(x, metas if with_meta else None)
            assert got.tolist() == list(range(ref.next_id, ref.next_id + n)), "ids are handed out in order"
        ref.add(np.asarray(got, dtype=np.int64), x, metas if with_meta else [{} for _ in range(n)])
    elif op in ("remove", "remove_buffer"):
        live = ref.ids()
        if not live:
            return
        if op == "remove_buffer":  # the newest items: often every unsaved one (an emptied buffer)
            pick = live[-int(rng.integers(1, min(len(live), 25) + 1)) :]
        else:
            pick = rng.choice(live, size=int(rng.integers(1, min(len(live), 15) + 1)), replace=False).tolist()
        coll.remove(pick)
        ref.remove([int(i) for i in pick])
    elif op == "remove_unknown":
        before = len(coll)
        bad = [ref.next_id + 5, *ref.ids()[:1]]
        try:
            coll.remove(bad)
        except ValueError as exc:
            assert "unknown or removed" in str(exc), exc
        else:
            raise AssertionError("removing an unknown id must fail")
        assert len(coll) == before, "a failed remove removes nothing"
    elif op == "save":
        coll.save()
        ref.commit()
        assert not coll.info()["unsaved_changes"]
    elif op == "reopen":
        save_first = rng.random() < 0.6
        target.reopen(save_first)
        if save_first or not target.discards_unsaved:
            ref.commit()
        else:
            ref.rollback()
    elif op == "search":
        live = ref.ids()
        nq = int(rng.choice([1, 2, 5, 40]))
        stored = bool(live) and rng.random() < 0.6
        noisy = rng.random() < 0.5
        if stored:
            q = np.stack([ref.items[int(i)][0] for i in rng.choice(live, size=nq)])
            if noisy:
                q = (q + 0.05 * rng.standard_normal(q.shape)).astype(np.float32)
        else:
            q = random_vectors(rng, nq, target.dim)
        k = int(rng.choice([1, 3, 10, 50]))
        _, where = random_where(rng, allow_null, odd_names)
        refine = None if rng.random() < 0.7 else int(rng.integers(1, 5))
        if where and any(name not in ref.fields() for name in where):
            try:
                coll.search(q, k, where=where, refine=refine)
            except ValueError as exc:
                assert "unknown filter field" in str(exc), exc
                return
            raise AssertionError(f"a filter on a field no live item carries must fail: {where}")
        scores, ids = coll.search(q, k, where=where, refine=refine)
        eligible = int(ref.matching(where).size)
        used_refine = refine if refine is not None else int(coll.params.get("refine", 0))
        check_search(
            ref,
            q.astype(np.float32),
            k,
            where,
            scores,
            ids,
            target.exact_answer(eligible if where else None, k),
            target.exact_scores(used_refine),
            stats,
            promised=target.promised_recall()
            if stored
            and not noisy
            and not where
            and k <= 10
            and refine is None
            and ref.changes_since_tuning <= 0.1 * len(ref.items)
            else None,
        )
    elif op == "search_text":
        if not target.text:
            return
        if not ref.text_fields:
            try:
                coll.search_text("red", 3)
            except ValueError as exc:
                assert "no text index" in str(exc), exc
                return
            raise AssertionError("search_text on a collection without a text index must fail")
        queries = [random_text_query(rng) for _ in range(int(rng.choice([1, 2, 5])))]
        k = int(rng.choice([1, 3, 10, 50]))
        _, where = random_where(rng, allow_null, odd_names)
        fields = None
        if len(ref.text_fields) > 1 and rng.random() < 0.4:
            fields = [ref.text_fields[int(rng.integers(len(ref.text_fields)))]]
        if where and any(name not in ref.fields() for name in where):
            try:
                coll.search_text(queries, k, where=where, fields=fields)
            except ValueError as exc:
                assert "unknown filter field" in str(exc), exc
                return
            raise AssertionError(f"a filter on a field no live item carries must fail: {where}")
        scores, ids = coll.search_text(queries, k, where=where, fields=fields)
        check_text_search([ref.text_scores(q, fields, where) for q in queries], k, scores, ids)
        stats.searches_exact += 1
    elif op == "text_fields":
        if not target.text:
            return
        choices = [["t"], ["t", "tags"], ["tags", "t"], ["tags"], None]
        new = choices[int(rng.integers(len(choices)))]
        coll.set_text_fields(new)
        if list(new or []) != ref.text_fields:
            ref.commit()  # a change saves the unsaved changes first
        ref.text_fields = list(new or [])
        assert coll.text_fields == ref.text_fields
    elif op == "reserve_ids":
        target_id = ref.next_id + int(rng.integers(0, 20))
        coll.reserve_ids(target_id)
        ref.next_id = max(ref.next_id, target_id)
    elif op == "get":
        live = ref.ids()
        if live:
            pick = rng.choice(live, size=min(len(live), 30), replace=False).tolist()
            assert coll.get(pick) == [ref.items[int(i)][1] for i in pick]
            np.testing.assert_array_equal(coll.vectors(pick), np.stack([ref.items[int(i)][0] for i in pick]))
        assert coll.ids().tolist() == ref.ids()
        if not live:
            assert coll.vectors([]).shape == (0, target.dim)
    elif not target.extra_ops(op, rng, ref, stats):
        raise AssertionError(f"unknown operation {op!r}")


def summary_recall(stats: FuzzStats) -> float:
    return stats.ann_hits / stats.ann_wanted if stats.ann_wanted else math.nan
