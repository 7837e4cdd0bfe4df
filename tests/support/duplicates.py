"""Vectors with planted near-duplicates, and collections made of them (the corpus tools' tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def planted(
    n: int, dim: int = 16, groups: int = 5, size: int = 3, noise: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, list[list[int]]]:
    """``n`` random unit vectors of which ``groups`` x ``size`` rows are near copies of one base each
    (cosine above ~0.99 within a group, near 0 between random rows); returns the rows and the groups
    (row numbers, each sorted)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    members = rng.permutation(n)[: groups * size].reshape(groups, size)
    for group in members:
        base = vectors[group[0]]
        for row in group[1:]:
            vectors[row] = base + noise * np.linalg.norm(base) * rng.normal(size=dim).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [sorted(int(i) for i in g) for g in members]


def make_collection(
    path: Path, vectors: np.ndarray, metadata: list[dict] | None = None, index: str = "Flat"
) -> Path:
    """A collection at ``path`` holding ``vectors`` (ids 0..n-1) with ``metadata``."""
    from indexes import Collection

    with Collection.create(path, dim=vectors.shape[1], index=index) as coll:
        if len(vectors):
            coll.add(vectors, metadata)
    return path
