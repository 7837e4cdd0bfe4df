"""Union-find (in memory and on disk) and the greedy keep-the-first policy against plain references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.corpus.components import PairStore, UnionFind, greedy_groups


def reference_components(n: int, a: np.ndarray, b: np.ndarray) -> list[int]:
    """Smallest member of each item's component, by a breadth-first walk."""
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for x, y in zip(a.tolist(), b.tolist()):
        neighbours[x].add(y)
        neighbours[y].add(x)
    label = [-1] * n
    for start in range(n):
        if label[start] >= 0:
            continue
        seen, todo = {start}, [start]
        while todo:
            for nxt in neighbours[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        for item in seen:
            label[item] = min(seen)
    return label


def reference_greedy(n: int, a: np.ndarray, b: np.ndarray, s: np.ndarray, rank: np.ndarray) -> list[int]:
    """Visit items by rank; keep one unless a kept item is its neighbour; a dropped item joins its
    most similar kept neighbour."""
    neighbours: dict[int, dict[int, float]] = {i: {} for i in range(n)}
    for x, y, score in zip(a.tolist(), b.tolist(), s.tolist()):
        neighbours[x][y] = max(score, neighbours[x].get(y, -9))
        neighbours[y][x] = max(score, neighbours[y].get(x, -9))
    kept: set[int] = set()
    for item in sorted(range(n), key=lambda i: rank[i]):
        if not any(other in kept for other in neighbours[item]):
            kept.add(item)
    group = [-1] * n
    for item in range(n):
        if item not in kept and neighbours[item]:
            best = max((score, -other) for other, score in neighbours[item].items() if other in kept)
            group[item] = -best[1]
    for item in range(n):
        if item in kept and any(g == item for g in group):
            group[item] = item
    return group


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_union_find_labels_equal_connected_components(tmp_path: Path, on_disk: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    m = int(rng.integers(0, 2 * n))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    uf = UnionFind(n, tmp_path / "parent.npy" if on_disk else None)
    for start in range(0, m, int(rng.integers(1, 50))):  # pairs arrive in batches of any size
        uf.union(a[start : start + 50], b[start : start + 50])
    labels = np.concatenate([roots for _, roots in uf.labels()])
    uf.close()
    assert labels.tolist() == reference_components(n, a, b)


def test_union_find_on_disk_keeps_its_parents_in_a_file(tmp_path: Path) -> None:
    uf = UnionFind(10, tmp_path / "parent.npy")
    uf.union(np.array([9, 3]), np.array([2, 9]))
    uf.close()
    assert np.load(tmp_path / "parent.npy")[[2, 3, 9]].tolist() == [2, 2, 2]


@pytest.mark.parametrize("seed", range(10))
def test_greedy_groups_equal_the_sequential_policy(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    m = int(rng.integers(0, 3 * n))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != b
    a, b = a[keep], b[keep]
    scores = rng.random(len(a)).astype(np.float32)
    rank = rng.permutation(n)
    store = PairStore(tmp_path / "pairs")
    for start in range(0, len(a), 7):
        store.append(a[start : start + 7], b[start : start + 7], scores[start : start + 7])
    assert greedy_groups(n, store, rank).tolist() == reference_greedy(n, a, b, scores, rank)


def test_greedy_keeps_both_ends_of_a_chain_where_components_join_them(tmp_path: Path) -> None:
    a, b, s = np.array([0, 1]), np.array([1, 2]), np.array([0.97, 0.96], dtype=np.float32)  # 0 ~ 1 ~ 2
    store = PairStore(tmp_path / "pairs")
    store.append(a, b, s)
    assert greedy_groups(3, store, np.arange(3)).tolist() == [0, 0, -1]  # 2 stays on its own
    uf = UnionFind(3)
    uf.union(a, b)
    assert next(uf.labels())[1].tolist() == [0, 0, 0]
