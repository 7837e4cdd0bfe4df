"""Collection: a directory holding a FAISS index, its raw vectors and SQLite metadata, and a manifest.

Layout::

    <path>/manifest.json        format version, dim, metric, count, index spec, fingerprint, params,
                                and the name of the data folder below (the commit point)
    <path>/v000007-3fa2c1d0/    one immutable data folder per saved version
        index.faiss             the ANN index (ids are the collection's int64 ids)
        vectors.npy, ids.npy    the raw float32 vector store, rows sorted by id
        tombstones.npy          ids still inside the index but removed (HNSW cannot delete)
        metadata.sqlite         id -> JSON fields
    <path>/.writer.lock         held (flock) while a writable handle is open

Saving writes a *new* data folder, fsyncs every file and the folder, then atomically
replaces ``manifest.json`` (write temp, fsync, rename, fsync the directory) and only then
deletes the previous folder. A crash or exception at any step leaves the previous
manifest pointing to the previous, untouched folder. Readers load the folder the manifest
names; if a save deletes it underneath them they re-read the manifest and retry, so a
read-only open always sees one consistent version.

Scores are *higher is better*: inner products for ``metric="ip"`` (cosine on unit
vectors) and negated squared Euclidean distances for ``metric="l2"``. Missing results
are padded with id ``-1`` and score ``-inf``.

Module map: :mod:`indexes.persist` (manifest, fsync, lock), :mod:`indexes.store` (raw vectors),
:mod:`indexes.metadata` (SQLite + filters), :mod:`indexes.faiss_index` (FAISS), :mod:`indexes.auto`
(index choice and tuning), :mod:`indexes.exact` (brute force for filters, refine, untrained indexes).

Search plan: no filter -> the ANN index (tombstones masked by a selector); a filter matching at
most ``exact_filter_max`` items (or under 5 % of an HNSW index) -> exact search over the
matches; a broader filter -> the ANN index with an ``IDSelectorBatch`` of the matching ids and
nprobe / efSearch widened by the selectivity. Any row left with fewer than k hits while k
eligible items exist is answered exactly, so filtered searches return k hits when k match.

Removal: Flat, IVF and PQ indexes delete ids in place; HNSW graphs cannot, so removed
ids become tombstones masked out of every search by an ID selector, and ``needs_rebuild``
turns true once they exceed 10 % of the index (``rebuild()`` rebuilds it from the raw store).

Index life cycle: trainable kinds (IVF, PQ) are trained on a seeded sample at the first
``save()`` with enough vectors (until then searches are exact over the raw store), and ANN
parameters are tuned to ``recall_target`` whenever the count has doubled since the last
tuning. ``index="auto"`` collections stop feeding an index once another kind suits the
count (searches go exact meanwhile) and ``save()`` builds the new one. Explicit specs are
never rebuilt implicitly: ``needs_rebuild`` says when ``rebuild()`` is worth it.

Memory: a writable handle holds the raw vectors and an in-memory copy of the metadata
database in RAM; read-only handles map the vectors from disk (``mmap=True`` maps the IVF
lists too). One writer at a time (a flock); concurrent ``search`` calls on one handle are
safe, mutating calls (add, remove, save, rebuild, tune) must not run concurrently with others.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import auto, exact, persist
from indexes import faiss_index as fi
from indexes.metadata import MetadataStore, validate_metadata
from indexes.persist import FORMAT, FORMAT_VERSION, MANIFEST, CollectionBusyError
from indexes.store import VectorStore

__all__ = ["FORMAT", "FORMAT_VERSION", "Collection", "CollectionBusyError"]

logger = logging.getLogger(__name__)

TOMBSTONE_REBUILD_FRACTION = 0.10  # needs_rebuild once this share of the index is removed-but-present
# needs_rebuild once the collection holds this many times the vectors it was trained with
RETRAIN_GROWTH = 4.0
TUNE_MIN = 1_000  # below this many vectors, ANN parameters are not tuned (defaults are used)
TUNE_QUERIES = 200  # sample queries used to measure recall when tuning
EXACT_FILTER_MAX = 20_000  # filters matching at most this many items are answered by exact search
HNSW_SPARSE_FILTER = 0.05  # HNSW searches filters accepting less than this share exactly
_ADD_BATCH = 65_536
SCORE_CONVENTION = {"ip": "inner product (higher is better)", "l2": "-squared L2 distance (higher is better)"}


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, received {value!r}")
    return int(value)


def _as_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"ids must be a 1-D sequence of integers, received {arr.dtype} array of shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


class Collection:
    """Vectors + metadata on disk, searchable with FAISS. Build with :meth:`create`, reopen with :meth:`open`."""

    exact_filter_max: int = EXACT_FILTER_MAX

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        index: faiss.Index,
        store: VectorStore,
        meta: MetadataStore,
        tombstones: np.ndarray,
        read_only: bool,
        lock_fd: int | None,
    ) -> None:
        self._path = path
        self._manifest = manifest
        self._dim = int(manifest["dim"])
        self._metric = str(manifest["metric"])
        self._fingerprint = manifest.get("fingerprint")
        self._requested = str(manifest["index_requested"])
        self._spec = str(manifest["index_spec"])
        self._params: dict[str, Any] = dict(manifest.get("params") or {})
        self._budget = manifest.get("memory_budget")
        self._recall_target = float(manifest.get("recall_target", 0.95))
        self._next_id = int(manifest["next_id"])
        self._index = index
        self._kind = fi.describe(index)
        self._store = store
        self._meta = meta
        self._tomb = np.sort(tombstones.astype(np.int64))
        self._tomb_sel: tuple[Any, ...] | None = None
        self._read_only = read_only
        self._lock_fd = lock_fd
        self._dirty = False
        self._closed = False
        # auto collections stop maintaining an index that another kind will replace at the next save
        self._deferred = False
        self._where_cache: dict[str, Any] = {}  # filter JSON -> matching ids; "sel:" + JSON -> selector
        fi.set_params(index, self._params)

    # ================================================================ create / open / close
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        metric: str = "ip",
        index: str = "auto",
        fingerprint: str | None = None,
        memory_budget: int | str | None = None,
        recall_target: float = 0.95,
        overwrite: bool = False,
    ) -> Collection:
        """Create an empty collection at ``path`` (written to disk at once) and return it open for writing.

        ``index`` is a FAISS factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
        ``"IVF4096,PQ32x8"``, ``"OPQ32,IVF1024,PQ32"``...) or ``"auto"`` (chosen from the count,
        dim and ``memory_budget``, bytes or e.g. ``"4GB"``, when the collection is saved).
        ``recall_target`` is what ANN search parameters are tuned to. ``overwrite=True``
        replaces an existing collection (never a directory that is not one).
        """
        path = Path(path)
        dim = _check_int("dim", dim, 1)
        if metric not in fi.METRICS:
            raise ValueError(f"metric {metric!r} is not supported; expected one of {sorted(fi.METRICS)}")
        budget = auto.parse_memory(memory_budget)
        if (
            isinstance(recall_target, bool)
            or not isinstance(recall_target, (int, float))
            or not 0 < recall_target <= 1
        ):
            raise ValueError(f"recall_target must be a number in (0, 1], received {recall_target!r}")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError(f"fingerprint must be a string or None, received {type(fingerprint).__name__}")
        requested = index.strip() if isinstance(index, str) else index
        spec = auto.choose_index(0, dim, budget) if requested == "auto" else requested
        built = fi.build_index(spec, dim, metric)  # validates the spec
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is a file; choose another path")
            if any(path.iterdir()):
                if not (path / MANIFEST).exists():
                    raise FileExistsError(
                        f"{path} exists, is not empty and is not a collection: choose an empty or new path"
                    )
                if not overwrite:
                    raise FileExistsError(
                        f"collection {path} already exists: open it, or pass overwrite=True"
                    )
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = persist.lock(path)
        try:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                old = persist.read_manifest(path) if (path / MANIFEST).exists() else None
            except ValueError:
                old = None  # a damaged collection being overwritten
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "version": (old or {}).get("version", 0),
                "dim": dim,
                "metric": metric,
                "count": 0,
                "next_id": 0,
                "index_requested": requested,
                "index_spec": spec,
                "fingerprint": fingerprint,
                "params": {},
                "memory_budget": budget,
                "recall_target": float(recall_target),
                "created": now,
                "updated": now,
                "data": None,
            }
            coll = cls(
                path,
                manifest,
                built,
                VectorStore(dim),
                MetadataStore.in_memory(),
                np.empty(0, dtype=np.int64),
                False,
                lock_fd,
            )
            coll._dirty = True
            coll.save()
        except BaseException:
            persist.unlock(lock_fd)
            raise
        return coll

    @classmethod
    def open(cls, path: str | os.PathLike[str], mmap: bool = False, read_only: bool = False) -> Collection:
        """Open an existing collection.

        ``read_only=True`` takes no lock and maps the raw vectors from disk; several readers may
        open a collection while one writer saves it. ``mmap=True`` also maps the index's
        inverted lists (IVF kinds) instead of loading them, and implies ``read_only``.
        """
        path = Path(path)
        read_only = read_only or mmap
        # a missing path or a non-collection fails here, before any lock file is made
        persist.read_manifest(path)
        lock_fd = None if read_only else persist.lock(path)
        try:
            for attempt in range(10):
                manifest = persist.read_manifest(path)
                try:
                    coll = cls._load(path, manifest, mmap, read_only, lock_fd)
                    break
                except (OSError, RuntimeError, ValueError, sqlite3.Error):
                    # a concurrent save may have replaced this version while we loaded it (FAISS reports a
                    # vanished file as RuntimeError): retry with the new manifest, else it is a real error
                    if attempt == 9 or persist.read_manifest(path).get("data") == manifest.get("data"):
                        raise
            if not read_only:
                coll._remove_stale_folders()
            return coll
        except BaseException:
            persist.unlock(lock_fd)
            raise

    @classmethod
    def _load(
        cls, path: Path, manifest: dict[str, Any], mmap: bool, read_only: bool, lock_fd: int | None
    ) -> Collection:
        data = path / str(manifest.get("data"))
        if not manifest.get("data") or not data.is_dir():
            raise FileNotFoundError(f"collection {path}: data folder {manifest.get('data')!r} is missing")
        dim = int(manifest["dim"])
        if read_only:
            meta = MetadataStore.open_read_only(data / "metadata.sqlite")
        else:
            meta = MetadataStore.load_copy(data / "metadata.sqlite")
        try:
            store = VectorStore.load(data, dim, mmap=read_only)
            index = fi.read_index(data / "index.faiss", mmap=mmap)
            tomb = np.load(data / "tombstones.npy", allow_pickle=False)
            count = int(manifest["count"])
            in_index = int(index.ntotal) - tomb.size
            problems = []
            if len(store) != count:
                problems.append(f"vector store holds {len(store)}")
            if len(meta) != count:
                problems.append(f"metadata holds {len(meta)}")
            if index.is_trained and in_index != count:
                problems.append(f"index holds {in_index}")
            if not index.is_trained and index.ntotal:
                problems.append(f"untrained index holds {index.ntotal}")
            if index.d != dim:
                problems.append(f"index has dim {index.d}")
            if problems:
                raise ValueError(
                    f"collection {path} is inconsistent: manifest says {count} items of dim {dim} but "
                    f"{', '.join(problems)}; restore it from a backup or rebuild it from the source vectors"
                )
        except BaseException:
            meta.close()
            raise
        return cls(path, manifest, index, store, meta, tomb, read_only, lock_fd)

    def close(self) -> None:
        """Release files and the writer lock. Unsaved changes are discarded (with a warning)."""
        if self._closed:
            return
        if self._dirty and not self._read_only:
            logger.warning("closing collection %s with unsaved changes; call save() to keep them", self._path)
        self._closed = True
        self._meta.close()
        persist.unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Save pending changes when the block ends normally; discard them when it raised."""
        try:
            if exc_type is None and self._dirty and not self._read_only and not self._closed:
                self.save()
        finally:
            if exc_type is not None:
                self._dirty = False  # the on-disk version stays as it was; no warning needed
            self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not getattr(self, "_closed", True):
                self._dirty = False
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Collection({str(self._path)!r}, count={len(self)}, dim={self._dim}, metric={self._metric!r}, index={self._spec!r})"

    # ================================================================ properties
    def __len__(self) -> int:
        return len(self._store)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint

    @property
    def index_spec(self) -> str:
        """The factory string of the index currently built (``index_requested`` in :meth:`info` may be "auto")."""
        return self._spec

    @property
    def path(self) -> Path:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def params(self) -> dict[str, Any]:
        """Search parameters in use (``nprobe``, ``efSearch``, ``refine``) and how they were obtained."""
        return dict(self._params)

    def ids(self) -> np.ndarray:
        """All ids, ascending: int64 [count]."""
        return self._store.live_ids()

    def fields(self) -> list[str]:
        """Metadata field names present in the collection (what ``where`` may filter on)."""
        return self._meta.fields()

    @property
    def needs_rebuild(self) -> bool:
        """True when the index should be rebuilt: many tombstones, large growth since training, or
        (for ``index="auto"``) a different index now suits the count. ``save()`` rebuilds auto collections."""
        return self._rebuild_reason() is not None

    def _rebuild_reason(self) -> str | None:
        n = len(self)
        if self._deferred:
            return f"index='auto' outgrew {self._spec}; the next save builds the index that suits {n} vectors"
        if self._tomb.size > TOMBSTONE_REBUILD_FRACTION * max(int(self._index.ntotal), 1):
            return f"{self._tomb.size} removed ids are still inside the {self._spec} index"
        if self._requested == "auto" and self._outgrown(n):
            return (
                f"{auto.choose_index(n, self._dim, self._budget)} suits {n} vectors better than {self._spec}"
            )
        trained_on = int(self._params.get("trained_on", 0))
        if self._kind.needs_training and trained_on and n > RETRAIN_GROWTH * trained_on:
            return f"index trained with {trained_on} vectors, collection now holds {n}"
        return None

    def info(self) -> dict[str, Any]:
        """Manifest fields plus live figures (count, fields, tombstones, needs_rebuild)."""
        return {
            "path": str(self._path),
            "format_version": FORMAT_VERSION,
            "version": self._manifest.get("version"),
            "count": len(self),
            "dim": self._dim,
            "metric": self._metric,
            "score": SCORE_CONVENTION[self._metric],
            "fingerprint": self._fingerprint,
            "index_spec": self._spec,
            "index_requested": self._requested,
            "index_kind": self._kind.kind,
            "index_trained": bool(self._index.is_trained),
            "index_deferred": self._deferred,
            "params": dict(self._params),
            "memory_budget": self._budget,
            "recall_target": self._recall_target,
            "fields": self.fields(),
            "tombstones": int(self._tomb.size),
            "needs_rebuild": self.needs_rebuild,
            "rebuild_reason": self._rebuild_reason(),
            "read_only": self._read_only,
            "unsaved_changes": self._dirty,
            "created": self._manifest.get("created"),
            "updated": self._manifest.get("updated"),
        }

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Raise ``ValueError`` unless the collection was built with ``fingerprint`` (None on either side passes)."""
        if fingerprint is not None and self._fingerprint is not None and fingerprint != self._fingerprint:
            raise ValueError(
                f"collection {self._path} was built by model {self._fingerprint}, received vectors from "
                f"{fingerprint}: search it with the model that built it, or re-embed the corpus"
            )

    # ================================================================ validation helpers
    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise ValueError(f"collection {self._path} is closed; open it again with Collection.open")
        if write and self._read_only:
            raise ValueError(
                f"collection {self._path} was opened read-only (or with mmap=True): reopen it with "
                "Collection.open(path) to modify it"
            )

    def _as_vectors(self, x: Any, what: str, allow_1d: bool) -> np.ndarray:
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
        if arr.shape[1] != self._dim:
            raise ValueError(
                f"{what} have dim {arr.shape[1]}, collection {self._path} has dim {self._dim}: "
                f"use vectors from the model that built it (fingerprint {self._fingerprint})"
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

    def _rows(self, ids: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        ids = _as_ids(ids)
        rows = self._store.rows_of(ids)
        if (rows < 0).any():
            unknown = ids[rows < 0]
            raise ValueError(
                f"cannot {what}: {unknown.size} unknown or removed id(s) {unknown[:5].tolist()}"
                f"{' ...' if unknown.size > 5 else ''}; valid ids come from add() or ids()"
            )
        return ids, rows

    # ================================================================ add / remove / get
    def add(self, vectors: Any, metadata: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        """Append vectors [n, d] (float64 is converted) with one metadata dict each; returns their new ids."""
        self._check_open(write=True)
        vecs = self._as_vectors(vectors, "vectors", allow_1d=False)  # [n, d]
        counts: dict[str, int] = {}
        texts = validate_metadata(metadata, vecs.shape[0], counts)
        n = vecs.shape[0]
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        if n == 0:
            return ids
        if self._requested == "auto" and not self._deferred and self._outgrown(len(self) + n):
            # another kind suits the new size: stop feeding this index (searches go exact over the
            # raw store meanwhile) and let the next save build the right one from the store
            self._deferred = True
            self._index.reset()
            self._tomb, self._tomb_sel = np.empty(0, dtype=np.int64), None
        if self._index_live:
            self._index.add_with_ids(vecs, ids)
        try:
            self._meta.insert(ids, texts, counts)
        except BaseException:
            if self._index_live and self._kind.supports_remove:
                self._index.remove_ids(ids)
            elif self._index_live:
                self._add_tombstones(ids)
            raise
        self._store.append(ids, vecs)
        self._next_id += n
        self._changed()
        return ids

    def remove(self, ids: Any) -> None:
        """Remove items by id (all must exist, or nothing is removed)."""
        self._check_open(write=True)
        ids, rows = self._rows(ids, "remove")
        ids, first = np.unique(ids, return_index=True)
        rows = rows[first]
        if ids.size == 0:
            return
        if self._index_live and self._index.ntotal:
            if self._kind.supports_remove:
                self._index.remove_ids(ids)
            else:
                self._add_tombstones(ids)
        self._meta.delete(ids)
        self._store.kill(rows)
        self._changed()

    @property
    def _index_live(self) -> bool:
        """The index holds every stored vector (else searches use the raw store)."""
        return bool(self._index.is_trained) and not self._deferred

    def _outgrown(self, n: int) -> bool:
        want = auto.choose_index(n, self._dim, self._budget)
        built_on = int(self._params.get("built_on", 0))
        return want != self._spec and (n >= 2 * built_on or n * 4 <= built_on)

    def _add_tombstones(self, ids: np.ndarray) -> None:
        self._tomb = np.union1d(self._tomb, ids)
        self._tomb_sel = None

    def _changed(self) -> None:
        self._dirty = True
        self._where_cache.clear()

    def get(self, ids: Any) -> list[dict[str, Any]]:
        """Metadata dict of each id, in order (new dicts: editing them changes nothing stored)."""
        self._check_open()
        ids, _ = self._rows(ids, "get metadata")
        return self._meta.get(ids)

    def vectors(self, ids: Any) -> np.ndarray:
        """The exact stored vectors of ``ids``: float32 [n, d]."""
        self._check_open()
        _, rows = self._rows(ids, "get vectors")
        return self._store.gather(rows)

    # ================================================================ search
    def search(
        self, queries: Any, k: int, where: dict[str, Any] | None = None, refine: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query: (scores float32 [n, k], ids int64 [n, k]), best first.

        ``queries`` is [n, d] or [d]. ``where`` filters metadata before searching (see
        :mod:`indexes.metadata`): every returned id matches, and k ids come back whenever k
        items match. ``refine=r`` takes ``r * k`` ANN candidates and rescores them exactly with
        the stored vectors (default: the tuned value, see :attr:`params`). Rows are padded with
        id -1 / score -inf when fewer than k items qualify.
        """
        self._check_open()
        q = self._as_vectors(queries, "queries", allow_1d=True)  # [n, d]
        k = _check_int("k", k, 1)
        if refine is not None:
            refine = _check_int("refine", refine, 1)
        else:
            refine = int(self._params.get("refine", 0))
        n_live = len(self)
        if 0 < n_live < k:  # never ask FAISS for more results than items: pad afterwards
            scores, ids = self._search(q, n_live, where, refine, n_live)
            pad_s, pad_i = self._padded(q.shape[0], k - n_live)
            return np.hstack([scores, pad_s]), np.hstack([ids, pad_i])
        return self._search(q, k, where, refine, n_live)

    def _search(
        self, q: np.ndarray, k: int, where: dict[str, Any] | None, refine: int, n_live: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if where is not None and not (isinstance(where, dict) and not where):  # {} filters nothing out
            match = self._match(where)  # sorted int64 [m]
            if match.size == 0:
                return self._padded(q.shape[0], k)
            frac = match.size / max(int(self._index.ntotal), 1)
            ann_ok = self._kind.supports_selector and self._kind.kind != "flat" and self._index_live
            # Exact search over the matches when they are few; also for HNSW under very selective
            # filters, where a filtered graph walk loses recall (its eligible neighbours are sparse).
            hnsw_sparse = self._kind.kind == "hnsw" and frac < HNSW_SPARSE_FILTER
            if not ann_ok or match.size <= self.exact_filter_max or match.size <= k or hnsw_sparse:
                return self._exact(q, k, self._store.rows_of(match))
            scores, ids = self._ann(q, k, refine, self._selector(where, match), frac)
            return self._fill_short(q, k, scores, ids, match)
        if n_live == 0:
            return self._padded(q.shape[0], k)
        if not self._index_live:
            return self._exact(q, k, None)
        scores, ids = self._ann(q, k, refine, self._tombstone_selector())
        return self._fill_short(q, k, scores, ids, None)

    def _padded(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact.padded(n, k)

    def _match(self, where: dict[str, Any]) -> np.ndarray:
        try:
            key = json.dumps(where, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            key = None
        if key is not None and key in self._where_cache:
            return self._where_cache[key]
        match = self._meta.matching_ids(where)
        if key is not None:
            if len(self._where_cache) >= 32:
                self._where_cache.pop(next(iter(self._where_cache)))
            self._where_cache[key] = match
        return match

    def _selector(self, where: dict[str, Any], match: np.ndarray) -> Any:
        """An IDSelectorBatch over ``match``, cached with the filter (building one costs ~20 ns per id)."""
        key = "sel:" + json.dumps(where, sort_keys=True, default=repr)
        sel = self._where_cache.get(key)
        if sel is None:
            sel = faiss.IDSelectorBatch(match)
            self._where_cache[key] = sel
        return sel

    def _tombstone_selector(self) -> Any:
        if self._tomb.size == 0:
            return None
        if self._tomb_sel is None:
            batch = faiss.IDSelectorBatch(self._tomb)
            self._tomb_sel = (faiss.IDSelectorNot(batch), batch)  # keep the inner selector alive
        return self._tomb_sel[0]

    def _ann(
        self, q: np.ndarray, k: int, refine: int, selector: Any, fraction: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        kk = k * refine if refine else k
        params = fi.search_params(self._index, selector, kk, fraction)
        scores, ids = fi.index_ids_search(self._index, q, kk, self._metric, params)  # [n, kk]
        if refine:
            scores, ids = self._rescore(q, ids, k)
        return scores, ids

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ids [n, c] from the raw store; best k per row."""
        rows = self._store.rows_of(cand)  # [n, c]
        return exact.rescore(q, cand, rows, self._store.vectors_view, k, self._metric)

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over ``rows`` of the raw store (None: every live row)."""
        if rows is None and self._store.n_dead == 0:
            return exact.knn(q, self._store.vectors_view, self._store.ids_view, k, self._metric)  # no copy
        rows = self._store.live_rows() if rows is None else rows
        return exact.knn(q, self._store.gather(rows), self._store.ids_view[rows], k, self._metric)

    def _fill_short(
        self, q: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray, match: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows where the ANN search found fewer than min(k, eligible items) (e.g. too few in the
        probed IVF lists): answer them exactly. ``match`` None means every live item is eligible."""
        want = min(k, len(self) if match is None else match.size)
        short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
        if short.size:
            s, i = self._exact(q[short], k, None if match is None else self._store.rows_of(match))
            scores[short], ids[short] = s, i
        return scores, ids

    # ================================================================ train / tune / rebuild
    def _sync(self) -> None:
        """Train an untrained index once enough vectors exist, then add every stored vector to it."""
        if self._deferred or self._index.is_trained or len(self) < max(fi.min_train_size(self._index), 1):
            return
        live = self._store.live_rows()
        vecs = self._store.vectors_view
        t0 = time.perf_counter()
        sample = fi.train_index(self._index, vecs, seed=0, rows=live)
        ids = self._store.ids_view[live]
        for lo in range(0, live.size, _ADD_BATCH):
            rows = live[lo : lo + _ADD_BATCH]
            self._index.add_with_ids(self._store.gather(rows), ids[lo : lo + _ADD_BATCH])
        self._params.update(trained_on=len(self), train_sample=sample)
        self._params.pop("tuned_on", None)
        logger.info(
            "trained %s on %d of %d vectors in %.1fs", self._spec, sample, len(self), time.perf_counter() - t0
        )
        self._dirty = True

    def _should_tune(self) -> bool:
        n = len(self)
        if self._kind.kind == "flat" or not self._index_live or n < TUNE_MIN:
            return False
        return n >= 2 * int(self._params.get("tuned_on", 0))

    def tune(self, recall_target: float | None = None, queries: Any = None, k: int = 10) -> dict[str, Any]:
        """Tune ``nprobe`` / ``efSearch`` / ``refine`` to reach ``recall_target`` recall@k against exact search.

        ``queries`` [q, d] default to ``TUNE_QUERIES`` stored vectors (each query's own id is left
        out). Pass real queries (e.g. text embeddings for an image collection) when they differ
        from the stored vectors. The chosen values are kept in :attr:`params` and the manifest.
        """
        self._check_open()
        target = self._recall_target if recall_target is None else float(recall_target)
        if not 0 < target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], received {recall_target!r}")
        k = _check_int("k", k, 1)
        if not self._index_live or len(self) <= k + 1:
            raise ValueError(
                f"cannot tune: the collection holds {len(self)} vectors and its index is not trained yet"
            )
        rng = np.random.default_rng(0)
        if queries is None:
            live = self._store.live_rows()
            pick = np.sort(rng.choice(live, size=min(TUNE_QUERIES, live.size), replace=False))
            q = self._store.gather(pick)  # [q, d]
            self_ids = self._store.ids_view[pick]
        else:
            q = self._as_vectors(queries, "queries", allow_1d=False)
            self_ids = np.full(q.shape[0], -2, dtype=np.int64)
        _, exact_ids = self._exact(q, k + 1, None)  # [q, k+1]
        truth = auto.drop_self(exact_ids, self_ids, k)
        has_codes = fi.has_codes(self._index)
        saved = dict(self._params)

        def run(params: dict[str, Any], kk: int) -> np.ndarray:
            fi.set_params(self._index, params)
            return self._ann(q, kk, int(params.get("refine", 0)), self._tombstone_selector())[1]

        try:
            chosen = auto.tune(self._kind.kind, self._kind.nlist, has_codes, run, truth, self_ids, k, target)
        finally:
            fi.set_params(self._index, saved)
        for key in ("nprobe", "efSearch", "refine"):
            self._params.pop(key, None)
        self._params.update(chosen, tuned_on=len(self), tune_queries=int(q.shape[0]), tune_k=k)
        fi.set_params(self._index, self._params)
        self._dirty = not self._read_only
        return dict(self._params)

    def rebuild(self, index: str | None = None) -> None:
        """Rebuild the index from the raw vector store (drops tombstones, retrains, re-tunes).

        ``index`` switches to another factory string or ``"auto"``; None keeps the requested one.
        The new index is used at once and written by the next :meth:`save`.
        """
        self._check_open(write=True)
        requested = self._requested if index is None else index
        spec = auto.choose_index(len(self), self._dim, self._budget) if requested == "auto" else requested
        t0 = time.perf_counter()
        new = fi.build_index(spec, self._dim, self._metric)
        old = (self._index, self._kind, self._spec, self._requested, self._params, self._tomb, self._deferred)
        self._index, self._kind, self._spec, self._requested = new, fi.describe(new), spec, requested
        self._deferred = False
        self._params = {"built_on": len(self)}
        self._tomb, self._tomb_sel = np.empty(0, dtype=np.int64), None
        try:
            if self._kind.needs_training:
                self._sync()
            else:
                live = self._store.live_rows()
                ids = self._store.ids_view[live]
                for lo in range(0, live.size, _ADD_BATCH):
                    self._index.add_with_ids(
                        self._store.gather(live[lo : lo + _ADD_BATCH]), ids[lo : lo + _ADD_BATCH]
                    )
            if self._should_tune():
                self.tune()
        except BaseException:
            (
                self._index,
                self._kind,
                self._spec,
                self._requested,
                self._params,
                self._tomb,
                self._deferred,
            ) = old
            self._tomb_sel = None
            raise
        self._params["build_seconds"] = round(time.perf_counter() - t0, 3)
        self._dirty = True
        logger.info("built %s over %d vectors in %.1fs", spec, len(self), time.perf_counter() - t0)

    # ================================================================ save
    def save(self) -> None:
        """Write the collection atomically (see the module doc); trains, tunes or rebuilds first when due."""
        self._check_open(write=True)
        if self._requested == "auto" and self.needs_rebuild:
            self.rebuild()
        else:
            self._sync()
            reason = self._rebuild_reason()
            if reason:
                logger.warning("collection %s would benefit from rebuild(): %s", self._path, reason)
        if self._should_tune():
            self.tune()
        if not self._dirty and self._manifest.get("data"):
            return
        version = int(self._manifest.get("version", 0)) + 1
        name = f"v{version:06d}-{secrets.token_hex(4)}"
        self._store = self._store.compacted()  # drops removed rows; changes nothing visible
        folder = self._path / name
        folder.mkdir()
        try:
            fi.write_index(self._index, folder / "index.faiss")
            self._store.save(folder)
            self._meta.write_to(folder / "metadata.sqlite")
            with open(folder / "tombstones.npy", "wb") as fh:
                np.save(fh, self._tomb, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            persist.fsync_dir(folder)
            persist.fsync_dir(self._path)
            manifest = dict(self._manifest)
            manifest.update(
                version=version,
                data=name,
                count=len(self),
                next_id=self._next_id,
                index_requested=self._requested,
                index_spec=self._spec,
                params=dict(self._params),
                fingerprint=self._fingerprint,
                updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            persist.write_manifest(self._path, manifest)  # commit point
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        previous = self._manifest.get("data")
        self._manifest = manifest
        self._dirty = False
        if previous:
            persist.remove_folder(self._path / str(previous))
        self._remove_stale_folders()

    def _remove_stale_folders(self) -> None:
        """Delete data folders the manifest does not name (left by an interrupted save)."""
        current = self._manifest.get("data")
        for child in self._path.iterdir():
            if child.is_dir() and persist.DATA_RE.match(child.name) and child.name != current:
                persist.remove_folder(child)
