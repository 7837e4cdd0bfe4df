"""Vectors to 2-D points: UMAP when ``umap-learn`` is installed, else PCA (numpy).

UMAP (McInnes, Healy & Melville, 2018) keeps neighbourhoods, so clusters of similar items show as
islands; it is an optional dependency (``pip install umap-learn``, the ``map`` extra) whose first call
in a process compiles its kernels (numba: about a minute). PCA is the exact linear
projection on the two directions of largest variance: the eigenvectors of the covariance
``X^T X / n`` of the centred vectors (accumulated in blocks, so memory is ``d x d``), each signed so
that its largest loading is positive (the same picture on every run).
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["pca_2d", "project", "umap_available"]

BLOCK = 65_536  # rows accumulated at a time into the covariance


def umap_available() -> bool:
    """Whether ``umap-learn`` can be imported."""
    return importlib.util.find_spec("umap") is not None


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """``[n, 2]`` float32: ``vectors`` ``[n, d]`` projected on their first two principal components."""
    x = np.asarray(vectors, dtype=np.float64)
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    mean = x.mean(axis=0)  # [d]
    cov = np.zeros((d, d))
    for start in range(0, n, BLOCK):
        block = x[start : start + BLOCK] - mean  # [b, d]
        cov += block.T @ block
    _, eigenvectors = np.linalg.eigh(cov / max(n, 1))  # ascending eigenvalues
    axes = eigenvectors[:, ::-1][:, :2]  # [d, 2] largest first
    if axes.shape[1] < 2:  # d == 1
        axes = np.hstack([axes, np.zeros((d, 2 - axes.shape[1]))])
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return ((x - mean) @ axes).astype(np.float32)


def project(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """``([n, 2] float32 points, the method used)``; ``method`` is ``"auto"`` (UMAP when installed and
    there are enough points, else PCA), ``"umap"`` (an ``ImportError`` saying what to install when it
    is missing) or ``"pca"``."""
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"method must be 'auto', 'umap' or 'pca'; received {method!r}")
    n = len(vectors)
    if method == "umap" and not umap_available():
        raise ImportError(
            "the UMAP projection needs umap-learn: pip install umap-learn (or choose --method pca)"
        )
    if method == "pca" or n < 5 or (method == "auto" and not umap_available()):
        return pca_2d(vectors), "pca"
    import warnings

    import umap

    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        n_neighbors=min(15, n - 1),
        random_state=seed,
        init="spectral" if n > 10 else "random",
    )
    with warnings.catch_warnings():  # a seed makes UMAP single-threaded, and it says so every time
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        points = reducer.fit_transform(np.asarray(vectors, dtype=np.float32))
    return np.asarray(points, dtype=np.float32), "umap"
