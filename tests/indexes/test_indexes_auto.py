"""index="auto" measures candidates against exact search; tuning uses the queries users send."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall

from indexes import Collection, Limits, auto

D = 32


def test_candidates_by_size_and_budget() -> None:
    assert auto.candidates(10_000, 256) == ["Flat"]
    assert auto.candidates(100_000, 256) == ["HNSW32", "IVF512,Flat", "IVF512,PQ64"]
    assert auto.candidates(1_000_000, 256) == ["IVF2048,Flat", "HNSW32", "IVF2048,PQ64"]
    two_gb = auto.parse_memory("2GB")
    assert "HNSW32" in auto.candidates(1_000_000, 256, two_gb), "HNSW beyond 300k whenever it fits the budget"
    assert auto.candidates(1_000_000, 256, auto.parse_memory("100MB")) == ["IVF2048,PQ64"]
    assert auto.choose_index(1_000_000, 256) == "IVF2048,Flat"


def test_falls_back_to_exact_search_when_no_index_is_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a small, structureless set every candidate is slower than brute force: auto keeps exact search."""
    monkeypatch.setattr(Collection, "default_limits", Limits(flat_max=500))
    rng = np.random.default_rng(70)
    x = rng.standard_normal((4_000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Collection.create(tmp_path / "c", 16) as coll:
        coll.add(x)
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        decision = coll.info()["auto"]
        assert coll.index_spec == "Flat" and decision["chosen"] == "Flat"
        assert "exact search" in decision["reason"] and decision["exact"]["batch_ms"] > 0
        tried = [t["spec"] for t in decision["tried"]]
        assert tried == auto.candidates(4_000, 16, limits=Limits(flat_max=500))[: len(tried)]
        assert all(t["verdict"] != "kept" for t in decision["tried"])
        q = x[:50]
        scores, found = coll.search(q, 10)
        want_s, want_i = exact_topk(q, x, 10)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5)
        assert recall(found, want_i) == 1.0


def test_keeps_the_first_candidate_that_is_much_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With timings that make the index 100x faster than exact search, the first candidate is kept."""
    monkeypatch.setattr(Collection, "default_limits", Limits(flat_max=500))
    calls = itertools.count()

    def fake_timing(search, sets, repeats=3, singles=20):  # exact first, then the candidate, per tuning
        search(sets[0].queries[:2], sets[0].where)
        return auto.Timing(1e-3, 1e-3) if next(calls) % 2 == 0 else auto.Timing(1e-5, 1e-5)

    monkeypatch.setattr(auto, "time_search", fake_timing)
    x = clustered(4_000, D, seed=71)
    with Collection.create(tmp_path / "c", D) as coll:
        coll.add(x)
        coll.save()
        decision = coll.info()["auto"]
        assert coll.index_spec == "HNSW32" and decision["chosen"] == "HNSW32"
        assert len(decision["tried"]) == 1 and decision["tried"][0]["speedup"] == 100.0
        assert coll.params["tuned_recall"] >= 0.95 and coll.params["speedup"] == 100.0
        _, found = coll.search(x[:50], 10)
        assert recall(found, exact_topk(x[:50], x, 10)[1]) >= 0.95
        coll.add(clustered(4_000, D, seed=72))
        assert coll.needs_rebuild, "the count doubled: the choice is due again"
        coll.save()
        assert coll.info()["auto"]["n"] == 8_000


def _cross_modal(n: int = 6_000, seed: int = 73) -> tuple[np.ndarray, np.ndarray]:
    """Image-like vectors in clusters and caption-like vectors of the same items shifted by one common
    offset (the modality gap of CLIP-like models) plus noise."""
    rng = np.random.default_rng(seed + 1_000)
    img = clustered(n, D, seed=seed, clusters=64, spread=0.6)
    offset = rng.standard_normal(D)
    offset /= np.linalg.norm(offset)
    txt = img + 1.5 * offset + 0.5 * rng.standard_normal(img.shape) / np.sqrt(D)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt.astype(np.float32)


def test_tuning_with_the_queries_users_send(tmp_path: Path) -> None:
    img, txt = _cross_modal()
    q = txt[:200]
    with Collection.create(tmp_path / "c", D, index="IVF64,Flat") as coll:
        coll.add(img)
        coll.save()
        self_tuned = coll.tune()  # stored vectors as queries: flattering
        _, found = coll.search(q, 10)
        truth = exact_topk(q, img, 10)[1]
        overstated = recall(found, truth)
        assert self_tuned["tuned_recall"] >= 0.95 and overstated < 0.9, (
            "stored-vector tuning overstates recall"
        )
        coll.set_tuning_queries({"text->image": (q, None)})
        tuned = coll.tune()
        assert tuned["nprobe"] > self_tuned["nprobe"]
        _, found = coll.search(q, 10)
        measured = recall(found, truth)
        assert tuned["tuned_recall_by_queries"] == {"text->image": pytest.approx(measured, abs=1e-4)}
        assert measured >= 0.95
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.params["tuned_recall_by_queries"]["text->image"] >= 0.95, "the query sample is kept"


def test_both_modalities_tune_across(tmp_path: Path) -> None:
    img, txt = _cross_modal(3_000, seed=74)
    meta = [{"modality": "image"}] * 3_000 + [{"modality": "text"}] * 3_000
    with Collection.create(tmp_path / "c", D, index="IVF64,Flat") as coll:
        coll.add(np.vstack([img, txt]), meta)
        coll.save()
        params = coll.tune()
        assert set(params["tuned_recall_by_queries"]) == {"image->text", "text->image"}
        assert min(params["tuned_recall_by_queries"].values()) >= 0.95
        _, found = coll.search(txt[:300], 10, where={"modality": "image"})
        assert recall(found, exact_topk(txt[:300], img, 10)[1]) >= 0.93


def test_tuning_query_errors(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", D, index="Flat") as coll:
        coll.add(clustered(100, D, seed=75), [{"g": 1}] * 100)
        with pytest.raises(ValueError, match="dim 5"):
            coll.set_tuning_queries({"q": (np.ones((3, 5)), None)})
        with pytest.raises(ValueError, match="unknown filter field"):
            coll.set_tuning_queries({"q": (np.ones((3, D)), {"nope": 1})})
        with pytest.raises(ValueError, match=r"\(vectors, where\) pair"):
            coll.set_tuning_queries({"q": np.ones((3, D))})  # type: ignore[dict-item]
