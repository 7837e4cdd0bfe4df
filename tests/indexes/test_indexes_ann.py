"""ANN kinds against exact search: recall@10 on clustered data, training, tuning, removal, rebuild, mmap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall

from indexes import Collection, Limits, auto
from indexes.limits import DEFAULT_LIMITS

D = 32


def _split(n: int, seed: int = 0, dim: int = D) -> tuple[np.ndarray, np.ndarray]:
    both = clustered(n + 100, dim, seed=seed, clusters=64)
    return both[:n], both[n:]


@pytest.mark.parametrize(
    ("spec", "n"),
    [
        ("HNSW32", 4_000),
        ("IVF32,Flat", 4_000),
        ("IVF16,PQ8x6", 3_000),
        pytest.param("IVF16,PQ8", 10_000, marks=pytest.mark.slow),  # 8-bit codebooks want ~10k points
        pytest.param("OPQ8,IVF16,PQ8x4", 2_000, marks=pytest.mark.slow),  # OPQ training is slow
    ],
)
def test_ann_recall_at_10(tmp_path: Path, spec: str, n: int) -> None:
    x, q = _split(n, seed=5)
    with Collection.create(tmp_path / "c", D, index=spec) as coll:
        coll.add(x)
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.index_spec == spec and coll.info()["index_trained"]
        params = coll.params
        assert params["tuned_recall"] >= 0.95 and params["tuned_on"] == n
        _, found = coll.search(q, 10)
    _, truth = exact_topk(q, x, 10)
    assert recall(found, truth) >= 0.95
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["params"]["tuned_recall"] == params["tuned_recall"]


def test_auto_choice_tiers() -> None:
    assert auto.choose_index(10, 256) == "Flat"
    assert auto.choose_index(100_000, 256) == "HNSW32"
    assert auto.choose_index(1_000_000, 256) == "IVF2048,Flat"
    assert auto.choose_index(1_000_000, 256, memory_budget=auto.parse_memory("100MB")) == "IVF2048,PQ64"
    assert auto.choose_index(1_000_000, 256, memory_budget=auto.parse_memory("30MB")) == "IVF2048,PQ16"
    with pytest.raises(ValueError, match="too small"):
        auto.choose_index(1_000_000, 256, memory_budget=1000)
    assert auto.parse_memory("1.5GB") == int(1.5 * 2**30) and auto.parse_memory(2048) == 2048
    assert auto.choose_nlist(1_000_000) == 2048 and auto.choose_nlist(10) == 1


def test_refine_rescoring_is_exact(tmp_path: Path) -> None:
    x, q = _split(2_000, seed=7)
    with Collection.create(tmp_path / "c", D, index="IVF16,PQ8x4") as coll:
        coll.add(x)
        coll.save()
        s1, i1 = coll.search(q, 10, refine=1)
        s8, i8 = coll.search(q, 10, refine=8)
    exact = np.einsum("nd,nkd->nk", q, x[i8])
    np.testing.assert_allclose(s8, exact, atol=1e-5)  # refined scores are exact inner products
    np.testing.assert_allclose(s1, np.einsum("nd,nkd->nk", q, x[i1]), atol=1e-5)
    _, truth = exact_topk(q, x, 10)
    assert recall(i8, truth) >= recall(i1, truth)


def test_untrained_index_answers_exactly_until_trained(tmp_path: Path) -> None:
    x, q = _split(2_000, seed=8)
    with Collection.create(tmp_path / "c", D, index="IVF32,Flat") as coll:  # needs 39 * 32 = 1248 to train
        coll.add(x[:500])
        coll.save()
        assert not coll.info()["index_trained"]
        _, found = coll.search(q, 5)
        _, truth = exact_topk(q, x[:500], 5)
        assert recall(found, truth) == 1.0
    with Collection.open(tmp_path / "c") as coll:
        coll.add(x[500:])
        coll.save()
        assert coll.info()["index_trained"] and coll.params["trained_on"] == 2_000


def test_retrain_flag_after_growth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = _split(6_000, seed=9)
    with Collection.create(tmp_path / "c", D, index="IVF8,Flat") as coll:
        coll.add(x[:1_000])
        coll.save()
        assert not coll.needs_rebuild
        coll.add(x[1_000:])
        assert coll.needs_rebuild and "trained with 1000" in coll.info()["rebuild_reason"]
        coll.rebuild()
        assert not coll.needs_rebuild and coll.params["trained_on"] == 6_000


def test_hnsw_removal_uses_tombstones_then_rebuild(tmp_path: Path) -> None:
    x, q = _split(3_000, seed=10)
    with Collection.create(tmp_path / "c", D, index="HNSW32") as coll:
        ids = coll.add(x)
        coll.save()
        gone = ids[:400]
        coll.remove(gone)
        assert coll.info()["tombstones"] == 400 and coll.needs_rebuild
        _, found = coll.search(x[:400], 10)  # the removed vectors themselves as queries
        assert not np.isin(found, gone).any()
        coll.save()
    with Collection.open(tmp_path / "c") as coll:
        assert coll.info()["tombstones"] == 400 and len(coll) == 2_600
        _, found = coll.search(x[:50], 10, where=None)
        assert not np.isin(found, gone).any()
        coll.rebuild()
        assert coll.info()["tombstones"] == 0 and not coll.needs_rebuild
        _, found = coll.search(q, 10)
    _, truth = exact_topk(q, x[400:], 10)
    assert recall(found, truth + 400) >= 0.95


@pytest.mark.parametrize("spec", ["IVF16,Flat", "Flat", "IVF16,PQ8x4"])
def test_removal_masks_then_compaction_drops(tmp_path: Path, spec: str) -> None:
    x, _ = _split(2_000, seed=11)
    with Collection.create(tmp_path / "c", D, index=spec) as coll:
        ids = coll.add(x)
        coll.save()
        coll.remove(ids[::2])
        assert coll.info()["tombstones"] == 1_000, "removed rows stay stored (masked) until merged"
        _, found = coll.search(x[:20], 10)
        assert (found % 2 == 1).all()
        coll.save()  # half of the segment removed: the merge policy rewrites it without them
        assert coll.info()["tombstones"] == 0 and len(coll) == 1_000
        _, found = coll.search(x[:20], 10)
        assert (found % 2 == 1).all() and (found >= 0).all()


def test_rebuild_switches_kind(tmp_path: Path) -> None:
    x, q = _split(2_000, seed=12)
    with Collection.create(tmp_path / "c", D, index="Flat") as coll:
        coll.add(x)
        coll.rebuild("HNSW32")
        assert coll.index_spec == "HNSW32" and coll.info()["index_requested"] == "HNSW32"
        with pytest.raises(ValueError, match="FAISS cannot build"):
            coll.rebuild("PQ7")
        assert coll.index_spec == "HNSW32"
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.index_spec == "HNSW32"
        _, found = coll.search(q, 10)
    assert recall(found, exact_topk(q, x, 10)[1]) >= 0.95


def test_tune_with_own_queries(tmp_path: Path) -> None:
    x, q = _split(3_000, seed=13)
    with Collection.create(tmp_path / "c", D, index="IVF32,Flat") as coll:
        coll.add(x)
        coll.save()
        params = coll.tune(recall_target=0.99, queries=q)
        assert params["tuned_recall"] >= 0.99 and params["tune_queries"] == 100


def test_mmap_open_ivf(tmp_path: Path) -> None:
    x, q = _split(3_000, seed=14)
    with Collection.create(tmp_path / "c", D, index="IVF32,Flat", metric="l2") as coll:
        coll.add(x)
    with Collection.open(tmp_path / "c", read_only=True) as ref:
        want = ref.search(q, 10)
    with Collection.open(tmp_path / "c", mmap=True) as coll:
        assert coll.read_only and coll.info()["index_kind"] == "ivf"
        got = coll.search(q, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        assert isinstance(coll.vectors([0]), np.ndarray)
        with pytest.raises(ValueError, match="read-only"):
            coll.add(x[:1])


def test_limits_are_checked_and_round_trip() -> None:
    assert 0 < DEFAULT_LIMITS.tombstone_rebuild_fraction < 1
    small = Limits(exact_filter_max=3, buffer_bytes=None, merge_factor=2)
    assert Limits.from_dict(small.as_dict()) == small
    with pytest.raises(ValueError, match="unknown Limits field"):
        Limits.from_dict({"exact_filter_mx": 3})
    with pytest.raises(ValueError, match="merge_factor must be >= 2"):
        Limits(merge_factor=1)
    with pytest.raises(ValueError, match="exact_filter_max must be a number >= 0"):
        Limits(exact_filter_max=-1)
