"""Checks of what users pass in (vectors, ids, integers), worded the same for every backend.

Errors say what was received, what was expected and what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_ids", "as_vectors", "check_int"]


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, received {value!r}")
    return int(value)


def as_ids(ids: Any) -> np.ndarray:
    """int64 [n] from any 1-D sequence of integers (a scalar becomes [1])."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"ids must be a 1-D sequence of integers, received {arr.dtype} array of shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


def as_vectors(
    x: Any, what: str, dim: int, where: Any, fingerprint: str | None, allow_1d: bool
) -> np.ndarray:
    """float32 C-contiguous [n, dim] from ``x``; ``ValueError`` for wrong shape, dtype, dim or non-finite values."""
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise ValueError(f"{what} must be a numeric array, received {type(x).__name__}") from exc
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{what} must be a real-valued float array, received dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        shape = "[n, d] or [d]" if allow_1d else "[n, d]"
        raise ValueError(f"{what} must be a 2-D array {shape}, received shape {list(arr.shape)}")
    if arr.shape[1] != dim:
        raise ValueError(
            f"{what} have dim {arr.shape[1]}, collection {where} has dim {dim}: "
            f"use vectors from the model that built it (fingerprint {fingerprint})"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # one float64 reduction (NaN/inf propagate) instead of a full boolean mask in the common case
    if arr.size and not np.isfinite(arr.sum(dtype=np.float64)) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{what} contain NaN or infinite values in rows {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}: clean or drop them first"
        )
    return arr
