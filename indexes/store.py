"""The raw vector store kept beside every index: exact float32 vectors and their ids.

ANN indexes may compress vectors (PQ) or be unable to forget them (HNSW). The store keeps
the exact vectors, so the collection can return them, rescore ANN candidates exactly
(``refine``), search exactly when a filter leaves few candidates, and rebuild the index
from scratch.

Rows are appended in id order, so ``ids`` is always sorted and an id's row is found by
binary search. Removed rows are only flagged dead; :meth:`VectorStore.compacted` drops
them (the collection does so when it saves).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["VectorStore"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


class VectorStore:
    """Growable [n, d] float32 array + sorted int64 ids + alive flags."""

    def __init__(self, dim: int, vectors: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        self.dim = int(dim)
        if vectors is None:
            vectors = np.empty((0, self.dim), dtype=np.float32)
            ids = np.empty(0, dtype=np.int64)
        assert ids is not None and vectors.shape == (ids.shape[0], self.dim)
        self._vecs = vectors  # [capacity, d] (or a read-only memmap [n, d])
        self._ids = ids  # [capacity]
        self._alive = np.ones(ids.shape[0], dtype=bool)  # [capacity]
        self._n = int(ids.shape[0])  # rows in use
        self.n_dead = 0

    # ----- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of live rows."""
        return self._n - self.n_dead

    @property
    def vectors_view(self) -> np.ndarray:
        """All rows in use, dead ones included: [n_rows, d]."""
        return self._vecs[: self._n]

    @property
    def ids_view(self) -> np.ndarray:
        return self._ids[: self._n]

    def live_ids(self) -> np.ndarray:
        ids = self._ids[: self._n]
        return ids.copy() if self.n_dead == 0 else ids[self._alive[: self._n]]

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._alive[: self._n])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is unknown or removed; any shape in, same shape out."""
        ids = np.asarray(ids, dtype=np.int64)
        known = self._ids[: self._n]
        if known.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(known, ids)  # same shape as ids
        pos_c = np.minimum(pos, known.size - 1)
        ok = (known[pos_c] == ids) & self._alive[pos_c]
        return np.where(ok, pos_c, -1).astype(np.int64)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of ``rows`` (all valid) as a new contiguous float32 array [len(rows), d]."""
        return np.ascontiguousarray(self._vecs[rows], dtype=np.float32)

    # ----- writing ----------------------------------------------------------------------------
    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = ids.shape[0]
        assert vectors.shape == (n, self.dim) and (self._n == 0 or n == 0 or ids[0] > self._ids[self._n - 1])
        if not self._vecs.flags.writeable:
            raise ValueError(
                "this collection was opened read-only (or with mmap=True): reopen it writable to add"
            )
        need = self._n + n
        if need > self._ids.shape[0]:
            cap = max(need, int(self._ids.shape[0] * 1.5) + 1024)
            vecs = np.empty((cap, self.dim), dtype=np.float32)
            vecs[: self._n] = self._vecs[: self._n]
            new_ids = np.empty(cap, dtype=np.int64)
            new_ids[: self._n] = self._ids[: self._n]
            alive = np.zeros(cap, dtype=bool)
            alive[: self._n] = self._alive[: self._n]
            self._vecs, self._ids, self._alive = vecs, new_ids, alive
        self._vecs[self._n : need] = vectors
        self._ids[self._n : need] = ids
        self._alive[self._n : need] = True
        self._n = need

    def kill(self, rows: np.ndarray) -> None:
        assert self._alive[rows].all()
        self._alive[rows] = False
        self.n_dead += int(rows.size)

    def compacted(self) -> VectorStore:
        """A copy without dead rows (self when there are none)."""
        if self.n_dead == 0:
            return self
        rows = self.live_rows()
        return VectorStore(self.dim, self._vecs[rows].astype(np.float32, copy=False), self._ids[rows].copy())

    # ----- files ----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``vectors.npy`` and ``ids.npy`` (live rows only) into ``folder``, fsynced."""
        store = self.compacted()
        _save_npy(folder / "vectors.npy", np.ascontiguousarray(store.vectors_view))
        _save_npy(folder / "ids.npy", np.ascontiguousarray(store.ids_view))

    @classmethod
    def load(cls, folder: Path, dim: int, mmap: bool) -> VectorStore:
        """Read a saved store; ``mmap=True`` maps the vectors read-only instead of loading them."""
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        if (
            vectors.dtype != np.float32
            or vectors.ndim != 2
            or vectors.shape[1] != dim
            or ids.shape != (vectors.shape[0],)
        ):
            raise ValueError(
                f"vector store in {folder} is inconsistent: vectors {vectors.dtype}{list(vectors.shape)}, "
                f"ids {list(ids.shape)}, expected float32 [n, {dim}] and [n]; the collection is damaged"
            )
        if ids.size > 1 and not (np.diff(ids) > 0).all():
            raise ValueError(f"vector store in {folder} has unsorted ids; the collection is damaged")
        return cls(dim, vectors, ids.astype(np.int64, copy=False))
