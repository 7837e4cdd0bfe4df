"""Range search on a k-NN index against brute force, across thresholds, k, max_k and batch sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexes import Collection
from retrieval.corpus.neighbours import (
    exact_pairs,
    exact_range_search,
    near_pairs,
    range_search,
    unique_pairs,
)

from support.duplicates import make_collection, planted


def _sets(result) -> list[set[int]]:
    return [set(result.of(i)[0].tolist()) for i in range(len(result))]


def _clustered(n: int, seed: int) -> np.ndarray:
    """Tight clusters of random sizes: many items have many neighbours above a high threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 8), 12))
    rows = centres[rng.integers(0, len(centres), n)] + 0.15 * rng.normal(size=(n, 12))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_range_search_equals_brute_force_on_a_flat_index(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = _clustered(int(rng.integers(20, 120)), seed)
    path = make_collection(tmp_path / "c", vectors)
    threshold = float(rng.choice([0.5, 0.8, 0.95, 0.999]))
    k = int(rng.integers(1, 5))  # tiny k: the doubling runs several rounds
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        queries = vectors[rng.choice(len(vectors), 15)]
        found = range_search(coll, queries, threshold, k=k, max_k=10_000)
        want = exact_range_search(vectors, ids, queries, threshold)
        assert _sets(found) == _sets(want)
        assert found.saturated == 0
        for i in range(len(found)):  # scores are exact cosines, best first
            got_ids, got_scores = found.of(i)
            assert np.all(np.diff(got_scores) <= 1e-7)
            np.testing.assert_allclose(
                got_scores, vectors[got_ids] @ (queries[i] / np.linalg.norm(queries[i])), atol=1e-5
            )


def test_a_query_is_left_out_of_its_own_results_and_saturation_is_counted(tmp_path: Path) -> None:
    vectors = np.repeat(np.eye(4, dtype=np.float32), 10, axis=0)  # 4 groups of 10 identical vectors
    path = make_collection(tmp_path / "c", vectors)
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        found = range_search(coll, vectors[:10], 0.99, exclude=ids[:10], k=2, max_k=1000)
        assert [len(s) for s in _sets(found)] == [9] * 10
        assert all(int(ids[i]) not in s for i, s in enumerate(_sets(found)))
        cut = range_search(coll, vectors[:10], 0.99, exclude=ids[:10], k=2, max_k=4)
        assert cut.saturated == 10  # 9 neighbours each, 4 allowed: every query says it may have more
        assert all(len(s) in (3, 4) for s in _sets(cut))  # 4 candidates, less the query when among them


def test_near_pairs_on_an_approximate_index_find_the_planted_pairs(tmp_path: Path) -> None:
    vectors, groups = planted(600, dim=32, groups=30, size=3, seed=1)
    path = make_collection(tmp_path / "c", vectors, index="HNSW16")
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        got = unique_pairs(near_pairs(coll, ids, 0.9, batch_size=64, k=2))
        want = unique_pairs(exact_pairs(coll.vectors, ids, 0.9, block=97))
    planted_pairs = {(ids[g[i]], ids[g[j]]) for g in groups for i in range(3) for j in range(i + 1, 3)}
    want_pairs = set(zip(want.a.tolist(), want.b.tolist()))
    got_pairs = set(zip(got.a.tolist(), got.b.tolist()))
    assert planted_pairs <= want_pairs
    assert got_pairs <= want_pairs  # exact re-check: never a pair below the threshold
    assert len(got_pairs & want_pairs) >= 0.95 * len(want_pairs)
    assert np.all(got.a < got.b) and np.all(got.scores >= 0.9)


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_exact_pairs_equal_all_pairs(block: int) -> None:
    vectors = _clustered(40, 3)
    ids = np.arange(100, 140)
    got = unique_pairs(exact_pairs(lambda chosen: vectors[chosen - 100], ids, 0.9, block=block))
    scores = vectors @ vectors.T
    want = {(100 + i, 100 + j) for i in range(40) for j in range(i + 1, 40) if scores[i, j] >= 0.9}
    assert set(zip(got.a.tolist(), got.b.tolist())) == want


def test_near_pairs_of_a_flat_index_are_the_exact_pairs(tmp_path: Path) -> None:
    vectors = _clustered(90, 4)
    path = make_collection(tmp_path / "c", vectors)
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        for batch_size, k in ((1, 1), (13, 3), (500, 16)):
            got = unique_pairs(near_pairs(coll, ids, 0.93, batch_size=batch_size, k=k))
            want = unique_pairs(exact_pairs(coll.vectors, ids, 0.93, block=11))
            assert set(zip(got.a.tolist(), got.b.tolist())) == set(zip(want.a.tolist(), want.b.tolist()))
            np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=1e-5)
