"""Checks of what users pass in (vectors, ids, integers), worded the same for every backend.

Errors say what was received, what was expected and what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_ID", "MAX_NORM", "as_ids", "as_vectors", "check_int", "check_norms"]

MAX_ID = 2**63 - 2  # the largest id a collection stores: the id after it must still be an int64
# Vectors longer than this are refused: the squared norm of a float32 vector must leave room for the
# inner products and squared distances FAISS computes in float32 (at most 3.4e38), or scores overflow
# to infinity and the items can never be found.
MAX_NORM = 2.0**60  # about 1.2e18
_INT64 = (-(2**63), 2**63 - 1)


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, received {value!r}")
    return int(value)


def check_creation(metric: Any, metrics: Any, recall_target: Any, fingerprint: Any) -> None:
    """The arguments every backend's ``create`` shares: ``ValueError`` naming the one that is wrong."""
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not supported; expected one of {sorted(metrics)}")
    if (
        isinstance(recall_target, bool)
        or not isinstance(recall_target, (int, float))
        or not 0 < recall_target <= 1
    ):
        raise ValueError(f"recall_target must be a number in (0, 1], received {recall_target!r}")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be a string or None, received {type(fingerprint).__name__}")


def as_ids(ids: Any) -> np.ndarray:
    """int64 [n] from any 1-D sequence of integers (a scalar becomes [1]); values outside int64 are
    refused by value (never wrapped around)."""
    try:
        arr = np.asarray(ids)
    except OverflowError:  # pragma: no cover - numpy versions that refuse huge Python ints outright
        arr = np.asarray(ids, dtype=object)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 1 and arr.dtype == object and all(_is_int(v) for v in arr.tolist()):
        values = [int(v) for v in arr.tolist()]
        _check_int64(values)
        return np.array(values, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"ids must be a 1-D sequence of integers, received {arr.dtype} array of shape {arr.shape}"
        )
    if arr.size and arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and int(arr.max()) > _INT64[1]:
        _check_int64([int(v) for v in arr[arr > _INT64[1]][:5].tolist()])
    return arr.astype(np.int64, copy=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int64(values: list[int]) -> None:
    bad = [v for v in values if not _INT64[0] <= v <= _INT64[1]]
    if bad:
        raise ValueError(
            f"id(s) {bad[:5]} do not fit in int64: ids are int64 values from 0 to {MAX_ID} "
            "(the ones add() returned, or ids())"
        )


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
    check_norms(arr, what)
    return arr


def check_norms(arr: np.ndarray, what: str, first_row: int = 0) -> None:
    """``ValueError`` naming the rows of finite float32 ``arr`` [n, d] longer than ``MAX_NORM``."""
    flat = arr.reshape(-1)
    # one float32 dot product (overflow gives inf) instead of a norm per row in the common case
    with np.errstate(over="ignore"):
        total = float(np.dot(flat, flat)) if flat.size else 0.0
    if total <= MAX_NORM**2:
        return
    wide = arr.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))  # [n]
    bad = np.flatnonzero(norms > MAX_NORM) + first_row
    if bad.size:
        raise ValueError(
            f"{what} have norms up to {norms.max():.3g} (rows {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}); scores of vectors with a norm above {MAX_NORM:.3g} "
            "overflow float32: scale them down (L2-normalise them for cosine similarity)"
        )
