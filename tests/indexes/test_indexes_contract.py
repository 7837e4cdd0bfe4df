"""The collection contract, the same for every backend: a local folder, Milvus Lite, and (slow suite) a real
Milvus server. Every behaviour here is one callers rely on without knowing where the collection lives."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk
from milvus_support import backends, location_factory

from indexes import collection_exists, create_collection, open_collection

N, D = 600, 16
TRICKY = ['x" || id >= 0 || "', "\\", '" or 1==1 or "', "a'b", "line\nbreak", "naïve 🙂", "", 'meta["g"]']


def _meta(i: int) -> dict:
    meta = {
        "group": i % 5,
        "lang": ["en", "fr", "de"][i % 3],
        "year": 1990 + i % 40,
        "score": round(i / N, 4),
        "name": f"item{i:04d}",
        "text": TRICKY[i % len(TRICKY)],
    }
    if i % 4 == 0:
        meta["opt"] = "set"  # missing on the other items: {"opt": None} finds them
    return meta


CASES = [
    ({"group": 3}, lambda m: m["group"] == 3),
    ({"lang": ["en", "de"]}, lambda m: m["lang"] in ("en", "de")),
    ({"lang": {"in": ["fr"]}, "group": {"ne": 1}}, lambda m: m["lang"] == "fr" and m["group"] != 1),
    ({"year": {"gte": 2000, "lt": 2010}}, lambda m: 2000 <= m["year"] < 2010),
    ({"score": {"gt": 0.9}, "group": [0, 1, 2]}, lambda m: m["score"] > 0.9 and m["group"] in (0, 1, 2)),
    ({"name": {"lte": "item0010"}}, lambda m: m["name"] <= "item0010"),
    ({"opt": None}, lambda m: "opt" not in m),
    ({"opt": {"ne": None}}, lambda m: "opt" in m),
    ({"opt": {"ne": "x"}}, lambda m: m.get("opt") == "set"),
    ({"opt": ["set", None]}, lambda m: True),
    ({"opt": None, "group": 2}, lambda m: "opt" not in m and m["group"] == 2),
    ({"group": 2, "opt": {"ne": None}}, lambda m: "opt" in m and m["group"] == 2),
    ({"opt": {"ne": "x"}, "lang": "fr"}, lambda m: m.get("opt") == "set" and m["lang"] == "fr"),
    ({"group": 99}, lambda m: False),
    ({"lang": []}, lambda m: False),
    ({"year": {"eq": 1995}, "lang": "en"}, lambda m: m["year"] == 1995 and m["lang"] == "en"),
    *[({"text": t}, lambda m, t=t: m["text"] == t) for t in TRICKY],
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both = clustered(N + 12, D, seed=11)
    return both[:N], both[N:]  # stored vectors [N, D], fresh queries [12, D]


@pytest.fixture(scope="module", params=backends())
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data) -> str:
    """A saved Flat collection of N items with metadata, fingerprint "fpA"; tests open it read-only."""
    loc = location_factory(request, request.param, tmp_path_factory.mktemp("contract"))("filled")
    with create_collection(loc, D, index="Flat", fingerprint="fpA") as coll:
        coll.add(data[0], [_meta(i) for i in range(N)])
    return loc


def _reference(pred) -> np.ndarray:
    return np.array([i for i in range(N) if pred(_meta(i))], dtype=np.int64)


# ------------------------------------------------------------------ search and filters
def test_search_equals_exact_search(filled: str, data) -> None:
    x, q = data
    with open_collection(filled, read_only=True) as coll:
        scores, ids = coll.search(q, 10)
    want_s, want_i = exact_topk(q, x, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (12, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-5)


def test_one_query_as_a_vector(filled: str, data) -> None:
    with open_collection(filled, read_only=True) as coll:
        scores, ids = coll.search(data[1][0], 3)
    assert ids.shape == (1, 3) and scores.shape == (1, 3)


def test_missing_results_are_padded(filled: str, data) -> None:
    with open_collection(filled, read_only=True) as coll:
        scores, ids = coll.search(data[1][:2], N + 5)
        few_s, few_i = coll.search(data[1][:2], 20, where={"year": 1995})  # 15 items match
    assert ((ids >= 0).sum(axis=1) == N).all()
    assert (ids[:, N:] == -1).all() and np.isneginf(scores[:, N:]).all()
    assert ((few_i >= 0).sum(axis=1) == 15).all() and (few_i[:, 15:] == -1).all()
    assert np.isneginf(few_s[:, 15:]).all() and np.isfinite(few_s[:, :15]).all()


@pytest.mark.parametrize(("where", "pred"), CASES, ids=[str(c[0]) for c in CASES])
def test_filters_match_a_python_reference(filled: str, data, where, pred) -> None:
    match = _reference(pred)
    with open_collection(filled, read_only=True) as coll:
        _, ids = coll.search(data[1][:3], N, where=where)
    for row in ids:
        assert np.array_equal(np.sort(row[row >= 0]), match), where
    if match.size:
        _, pos = exact_topk(data[1][:3], data[0][match], min(5, match.size))
        np.testing.assert_array_equal(ids[:, : pos.shape[1]], match[pos])


def test_filter_errors_are_clear(filled: str, data) -> None:
    with open_collection(filled, read_only=True) as coll:
        with pytest.raises(ValueError, match=r"unknown filter field 'grup'.*'group'"):
            coll.search(data[1], 3, where={"grup": 1})
        with pytest.raises(ValueError, match="unknown operator 'like'"):
            coll.search(data[1], 3, where={"name": {"like": "item%"}})
        with pytest.raises(ValueError, match="range operator 'gt' needs a number or a string"):
            coll.search(data[1], 3, where={"year": {"gt": None}})
        with pytest.raises(ValueError, match="'in' needs a list"):
            coll.search(data[1], 3, where={"year": {"in": 3}})
        with pytest.raises(ValueError, match="must be a dict"):
            coll.search(data[1], 3, where="year = 3")  # type: ignore[arg-type]
        _, ids = coll.search(data[1][:1], 3, where={})  # {} filters nothing out
    assert (ids >= 0).all()


def test_wrong_dim_is_a_clear_error(filled: str, data) -> None:
    with open_collection(filled, read_only=True) as coll:
        with pytest.raises(ValueError, match=f"have dim 8, collection .* has dim {D}"):
            coll.search(np.zeros((1, 8), np.float32), 3)
        with pytest.raises(ValueError, match="NaN or infinite"):
            coll.search(np.full((1, D), np.nan, np.float32), 3)


# ------------------------------------------------------------------ reopening
def test_reopen_keeps_everything(filled: str, data) -> None:
    x, _ = data
    with open_collection(filled, read_only=True) as coll:
        assert (len(coll), coll.dim, coll.metric, coll.fingerprint) == (N, D, "ip", "fpA")
        assert coll.index_spec == "Flat" and coll.read_only
        np.testing.assert_array_equal(coll.ids(), np.arange(N))
        np.testing.assert_array_equal(coll.vectors([5, 0, 599]), x[[5, 0, 599]])
        assert coll.get([7, 3]) == [_meta(7), _meta(3)]
        assert coll.fields() == sorted(_meta(0))
        info = coll.info()
        assert info["count"] == N and info["fingerprint"] == "fpA" and info["dim"] == D
        with pytest.raises(ValueError, match="read-only"):
            coll.add(x[:1])
        with pytest.raises(ValueError, match="unknown or removed id"):
            coll.get([N + 3])


def test_fingerprint_is_checked(filled: str) -> None:
    with open_collection(filled, read_only=True) as coll:
        coll.check_fingerprint("fpA")
        coll.check_fingerprint(None)
        with pytest.raises(ValueError, match="made by the model with fingerprint fpA, but the model given has fingerprint fpB"):
            coll.check_fingerprint("fpB")
    with pytest.raises(ValueError, match="made by the model with fingerprint fpA, but the model given has fingerprint fpB"):
        open_collection(filled, read_only=True, fingerprint="fpB")
    with open_collection(filled, read_only=True, fingerprint="fpA") as coll:
        assert coll.fingerprint == "fpA"


def test_exists(filled: str) -> None:
    assert collection_exists(filled)


def test_the_documented_example_runs() -> None:
    import indexes.backends

    assert doctest.testmod(indexes.backends).failed == 0


# ------------------------------------------------------------------ writing
@pytest.mark.parametrize("location", backends(), indirect=True)
def test_add_remove_get_vectors_ids(location: Callable[[str], str]) -> None:
    loc = location("crud")
    assert not collection_exists(loc)
    x = clustered(40, D, seed=5)
    with create_collection(loc, D, index="Flat", fingerprint="fp") as coll:
        assert len(coll) == 0 and coll.ids().size == 0
        empty_s, empty_i = coll.search(x[:2], 3)
        assert (empty_i == -1).all() and np.isneginf(empty_s).all()
        first = coll.add(x[:30], [{"i": i, "even": i % 2 == 0} for i in range(30)])
        assert first.dtype == np.int64 and np.unique(first).size == 30
        coll.remove(first[:5])
        second = coll.add(x[30:], [{"i": i} for i in range(30, 40)])
        assert second.min() > first.max(), "ids are never reused"
        assert coll.add(np.zeros((0, D), np.float32)).shape == (0,)
        with pytest.raises(ValueError, match="unknown or removed id"):
            coll.remove([first[0], first[10]])  # first[0] is gone: nothing is removed
        assert len(coll) == 35
        with pytest.raises(ValueError, match="metadata has 1 entries but 2 vectors"):
            coll.add(x[:2], [{"i": 0}])
        with pytest.raises(ValueError, match="have dim 4"):
            coll.add(np.zeros((1, 4), np.float32))
        coll.save()
        live = np.concatenate([first[5:], second])
        np.testing.assert_array_equal(coll.ids(), np.sort(live))
        np.testing.assert_array_equal(coll.vectors(second[::-1]), x[30:][::-1])
        assert coll.get(first[5:7]) == [{"i": 5, "even": False}, {"i": 6, "even": True}]
        _, ids = coll.search(x[:5], 1)
        assert not np.isin(ids, first[:5]).any(), "removed items are never returned"
        _, ids = coll.search(x[5:10], 1)
        np.testing.assert_array_equal(ids[:, 0], first[5:10])
    with open_collection(loc) as coll:
        assert len(coll) == 35
        third = coll.add(x[:1], [{"np": np.int64(3)}])
        assert third[0] > second.max()
        assert coll.get(third) == [{"np": 3}]
        assert coll.fields() == ["even", "i", "np"]


@pytest.mark.parametrize("location", backends(), indirect=True)
def test_filtered_ann_search_returns_k_whenever_k_match(location: Callable[[str], str]) -> None:
    """An IVF index probing a few lists misses most of a rare group's items; the result is still complete."""
    x, q = clustered(900, D, seed=9), clustered(6, D, seed=10)
    rare = np.arange(0, 900, 100)  # 9 items
    with create_collection(location("ivf"), D, index="IVF16,Flat") as coll:
        coll.add(x, [{"rare": bool(i % 100 == 0)} for i in range(900)])
        coll.save()
        scores, ids = coll.search(q, 5, where={"rare": True})
    _, pos = exact_topk(q, x[rare], 5)
    np.testing.assert_array_equal(ids, rare[pos])
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("location", backends(), indirect=True)
def test_model_info_is_kept_with_the_collection(location: Callable[[str], str]) -> None:
    loc = location("provenance")
    given = {"fingerprint": "fpA", "model_dir": "/models/a", "revision": "abc"}
    with create_collection(loc, D, fingerprint="fpA", model_info=given) as coll:
        coll.add(np.eye(D, dtype=np.float32)[:2])
    given["revision"] = "changed"  # the collection kept its own copy
    with open_collection(loc, read_only=True) as coll:
        assert coll.model_info == coll.info()["model_info"] == {**given, "revision": "abc"}
    with pytest.raises(ValueError, match="model_info must be"):
        create_collection(location("bad_provenance"), D, model_info={"x": object()})
