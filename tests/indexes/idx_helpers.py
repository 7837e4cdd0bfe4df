"""Shared helpers for the indexes tests: seeded clustered data and numpy references."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 32, spread: float = 0.35) -> np.ndarray:
    """Unit vectors [n, dim] float32 drawn around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))  # [n, dim]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_topk(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference: (scores [q, k], positions [q, k]), higher is better."""
    if metric == "ip":
        s = queries @ base.T  # [q, n]
    else:
        s = -((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)  # [q, n]
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(f[f >= 0], t).size / t.size for f, t in zip(found, truth)]))
