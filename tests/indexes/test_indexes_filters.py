"""Metadata filters: applied before the search, only matching ids, k of them whenever k match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall

from indexes import Collection, Limits
from indexes.metadata import MetadataStore, validate_metadata

N, D = 3_000, 16


def _meta(i: int) -> dict:
    return {
        "group": i % 10,
        "lang": ["en", "fr", "de"][i % 3],
        "score": i / N,
        "rare": i % 500 == 0,
        "name": f"item{i:05d}",
        **({"opt": None} if i % 7 == 0 else {}),
    }


@pytest.fixture(scope="module")
def data():
    both = clustered(N + 20, D, seed=3)  # queries from the data's own distribution
    return both[:N], both[N:]


@pytest.fixture(scope="module", params=["Flat", "HNSW32", "IVF16,Flat"])
def coll(request, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("filters") / "c"
    with Collection.create(path, D, index=request.param) as c:
        c.add(data[0], [_meta(i) for i in range(N)])
    c = Collection.open(path, read_only=True)
    yield c
    c.close()


def _matching(pred) -> np.ndarray:
    return np.array([i for i in range(N) if pred(_meta(i))], dtype=np.int64)


CASES = [
    ({"group": 3}, lambda m: m["group"] == 3),
    ({"lang": ["en", "de"]}, lambda m: m["lang"] in ("en", "de")),
    ({"lang": {"in": ["fr"]}, "group": {"ne": 1}}, lambda m: m["lang"] == "fr" and m["group"] != 1),
    ({"score": {"gte": 0.25, "lt": 0.5}}, lambda m: 0.25 <= m["score"] < 0.5),
    ({"score": {"gt": 0.9}, "group": [0, 1, 2]}, lambda m: m["score"] > 0.9 and m["group"] in (0, 1, 2)),
    ({"rare": True}, lambda m: m["rare"]),
    ({"name": {"lte": "item00010"}}, lambda m: m["name"] <= "item00010"),
    ({"opt": None}, lambda m: "opt" not in m or m["opt"] is None),
    ({"group": 99}, lambda m: False),
    ({"lang": []}, lambda m: False),
]


@pytest.mark.parametrize("exact_max", [20_000, 0], ids=["planner", "selector"])
@pytest.mark.parametrize(("where", "pred"), CASES)
def test_filter_only_matching_and_k_returned(
    coll: Collection, data, where, pred, exact_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    coll.limits = Limits(exact_filter_max=exact_max)  # 0 forces the FAISS ID-selector path
    x, q = data
    match = _matching(pred)
    k = 10
    scores, ids = coll.search(q, k, where=where)
    want = min(k, match.size)
    assert ((ids >= 0).sum(axis=1) == want).all(), "k results whenever k items match"
    assert np.isin(ids[ids >= 0], match).all(), "only matching items"
    assert (ids[:, want:] == -1).all() and np.isneginf(scores[:, want:]).all()
    if match.size:
        _, pos = exact_topk(q, x[match], want)
        truth = match[pos]
        r = recall(ids[:, :want], truth)
        assert r >= (1.0 if coll.index_spec == "Flat" or exact_max else 0.9), r


def test_filters_follow_add_and_remove(tmp_path: Path) -> None:
    x = clustered(50, 8)
    with Collection.create(tmp_path / "c", 8, index="Flat") as c:
        ids = c.add(x, [{"g": i % 2} for i in range(50)])
        _, found = c.search(x[0], 50, where={"g": 0})
        assert (found[0] >= 0).sum() == 25
        c.remove(ids[:10])
        _, found = c.search(x[0], 50, where={"g": 0})
        assert (found[0] >= 0).sum() == 20 and found[0][found[0] >= 0].min() >= 10
        c.add(x[:2], [{"g": 0}, {"h": 1}])
        _, found = c.search(x[0], 50, where={"g": 0})
        assert (found[0] >= 0).sum() == 21
        assert c.fields() == ["g", "h"]


def test_compiled_sql_binds_values() -> None:
    store = MetadataStore.in_memory()
    store.insert(np.arange(3), validate_metadata([{"a": "x'; DROP TABLE items; --"}, {"a": 2}, {"b": 1}], 3))
    sql, params = store.compile({"a": "x'; DROP TABLE items; --"})
    assert "DROP" not in sql and "x'; DROP TABLE items; --" in params
    assert store.matching_ids({"a": "x'; DROP TABLE items; --"}).tolist() == [0]
    assert store.matching_ids({"a": {"gte": 1}}).tolist() == [1], "numeric range ignores text values"
    assert store.matching_ids({"a": {"gte": ""}}).tolist() == [0], "text range ignores numbers"
    assert len(store) == 3
    store.delete(np.array([2]))
    assert store.fields() == ["a"]


@pytest.mark.parametrize("spec", ["IVF512,Flat", "PQ4x4"], ids=["untrained-ivf", "codes-without-selector"])
def test_broad_filters_match_in_every_segment_and_the_buffer(tmp_path: Path, spec: str) -> None:
    """Parts whose index takes no ID selector (untrained IVF, PQ) are filtered with their own rows."""
    rng = np.random.default_rng(11)
    x = clustered(660, 8, seed=11)
    meta = [{"h": int(v)} for v in rng.integers(0, 2, 660)]
    limits = Limits(exact_filter_max=10, merge_factor=1_000, points_per_centroid=4)
    with Collection.create(tmp_path / "c", 8, index=spec, limits=limits) as coll:
        for lo in (0, 300):
            coll.add(x[lo : lo + 300], meta[lo : lo + 300])
            coll.save()
        coll.add(x[600:], meta[600:])  # unsaved rows: a third part, with fewer rows than the others
        assert len(coll.segments) == 2
        match = np.array([i for i, m in enumerate(meta) if m["h"] == 1])
        _, ids = coll.search(x[:20], 50, where={"h": 1})
        assert ((ids >= 0).sum(axis=1) == 50).all(), "k results whenever k items match"
        assert np.isin(ids, match).all(), "only matching items, from every part"
        if spec.startswith("IVF"):  # untrained: every part is searched exactly
            _, pos = exact_topk(x[:20], x[match], 50)
            np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(match[pos], axis=1))


def test_field_names_with_backslashes_and_control_characters_filter(tmp_path: Path) -> None:
    names = ["a\\b", "\\", "tab\there", "new\nline", "quo'te", "uni\u00e9", "dot.ted", "br[0]"]
    x = clustered(len(names) * 2, 8)
    meta = [{name: i % 2} for name in names for i in range(2)]
    with Collection.create(tmp_path / "c", 8, index="Flat") as coll:
        coll.add(x, meta)
        assert coll.fields() == sorted(names)
        for j, name in enumerate(names):
            _, ids = coll.search(x[0], 4, where={name: 1})
            assert ids[0, ids[0] >= 0].tolist() == [2 * j + 1], name
            _, ids = coll.search(x[0], 4, where={name: {"in": [0]}})
            assert ids[0, ids[0] >= 0].tolist() == [2 * j], name
