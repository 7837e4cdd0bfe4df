"""Collection: vectors, their metadata and a FAISS index, kept as immutable segments on disk.

Layout::

    <path>/manifest.json          format, dim, metric, count, index spec, fingerprint, tuned params,
                                  the segments of this version with a checksum of every file
                                  (the commit point: replaced atomically by every save)
    <path>/s000012-3fa2c1d0/      a segment: vectors.npy, ids.npy, metadata.sqlite, its index
                                  (HNSW graph / IVF lists) and its deletion record (indexes.segment)
    <path>/t000009-5e0b77aa.faiss the trained IVF / codebook template segments share (trainable kinds)
    <path>/.writer.lock           held (flock) while a writable handle is open

Changes cost what they change. ``add`` puts items in an in-memory buffer (with its own index);
``remove`` records deletions; ``save()`` writes the buffer as a new segment, the deletion records
of the segments that changed and a new manifest, nothing else. When the buffer outgrows its
share of ``memory_budget`` it is written as a segment before the save (committed by it), so a
writable handle holds the index structures and the current batch, never all vectors: segment
vectors, graphs and IVF lists are memory-mapped. Small segments are merged after saves by the
policy of :mod:`indexes.compaction` (or explicitly by :meth:`Collection.compact`).

Atomicity: a save writes new files only, fsyncs them, then replaces ``manifest.json`` (write temp,
fsync, rename, fsync the directory). A crash or exception at any step leaves the previous manifest
naming untouched files. Files no manifest names are deleted after the commit, by the writer only;
readers keep the files they opened. Read-only opens that meet a file deleted under them retry
with the new manifest, so they always see one whole version.

Damage: every file's checksum is in the manifest (:mod:`indexes.files`). Opening checks sizes and
headers, and checksums files up to 64 MB whole; :meth:`Collection.verify` reads everything, and
merges and rebuilds verify what they copy.

Scores are *higher is better*: inner products for ``metric="ip"`` (cosine on unit vectors) and
negated squared Euclidean distances for ``metric="l2"``. Missing results are padded with id
``-1`` and score ``-inf``. The search plan is in :mod:`indexes.planner`.

Index life cycle: trainable kinds (IVF, PQ) train on a seeded sample once enough vectors exist
(until then searches are exact), and search parameters are tuned to ``recall_target`` whenever the
count has doubled since the last tuning. ``index="auto"`` chooses by measurement
(:mod:`indexes.choice`): it never keeps an index slower than exact search.

One writer at a time (a flock); concurrent ``search`` calls on one handle are safe, mutating calls
(add, remove, save, compact, rebuild, tune) must not run concurrently with others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes import auto, checks, files, legacy, persist, planner
from indexes import segment as segments_module
from indexes.faiss_index import METRICS
from indexes.files import DamagedFileError
from indexes.fingerprint import check_fingerprint
from indexes.limits import DEFAULT_BUFFER_BYTES, DEFAULT_LIMITS, Limits, as_limits
from indexes.location import local_folder
from indexes.maintenance import CollectionMaintenance
from indexes.metadata import compile_where, validate_metadata
from indexes.persist import FORMAT, FORMAT_VERSION, MANIFEST, CollectionBusyError
from indexes.segment import Buffer, Part, Segment
from indexes.template import Template

__all__ = ["FORMAT", "FORMAT_VERSION", "Collection", "CollectionBusyError"]

logger = logging.getLogger(__name__)

MAX_PADDING_BYTES = 1 << 30  # a search asking for more results than items may pad its answer up to this size
SCORE_CONVENTION = {"ip": "inner product (higher is better)", "l2": "-squared L2 distance (higher is better)"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Collection(CollectionMaintenance):
    """Vectors + metadata on disk, searchable with FAISS. Build with :meth:`create`, reopen with :meth:`open`."""

    default_limits: Limits = DEFAULT_LIMITS  # the limits of handles opened without ``limits=``

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        segments: list[Segment],
        template: Template,
        read_only: bool,
        lock_fd: int | None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._path = path
        self._limits = limits
        self._manifest = manifest  # the committed manifest, as on disk (format 2)
        self._dim = int(manifest["dim"])
        self._metric = str(manifest["metric"])
        self._fingerprint = manifest.get("fingerprint")
        self._requested = str(manifest["index_requested"])
        self._params: dict[str, Any] = dict(manifest.get("params") or {})
        self._budget = manifest.get("memory_budget")
        self._recall_target = float(manifest.get("recall_target", 0.95))
        self._next_id = int(manifest["next_id"])
        self._auto: dict[str, Any] | None = manifest.get("auto")
        self._filters: OrderedDict[str, planner.Match] = OrderedDict()
        self._filter_lock = threading.Lock()
        self._segments = segments
        self._template = template
        self._template_record: dict[str, Any] | None = manifest.get("template")
        self._queries_record: dict[str, Any] | None = manifest.get("queries")
        self._read_only = read_only
        self._lock_fd = lock_fd
        self._buffer: Buffer | None = None if read_only else Buffer(self._dim, template)
        self._pending: set[Path] = set()  # files written for the next commit (flushed segments, indexes)
        self._in_flight: set[Path] = set()  # folders worker processes are writing (bulk builds): never swept
        self._deleted_fields: dict[str, dict[str, int]] = {
            s.name: dict((s.entry.get("deleted") or {}).get("fields") or {}) for s in segments
        }
        self._changed_deletes: set[str] = set()  # segments whose deletion record must be written
        self._dirty = False
        self._closed = False
        self._runner: Any = None  # set by bulk builds: builds segment indexes in worker processes

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
        model_info: dict[str, Any] | None = None,
        limits: Limits | None = None,
    ) -> Collection:
        """Create an empty collection at ``path`` (written to disk at once) and return it open for writing.

        ``index`` is a FAISS factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
        ``"IVF4096,PQ32x8"``, ``"OPQ32,IVF1024,PQ32"``...) or ``"auto"`` (chosen when the collection
        is saved, by measuring candidates against exact search, within ``memory_budget``: bytes or
        e.g. ``"4GB"``; it also bounds the unsaved items kept in memory). ``recall_target`` is what
        ANN search parameters are tuned to. ``overwrite=True`` replaces an existing collection
        (never a directory that is not one). ``model_info`` is a small JSON-able dict saying where the
        model with ``fingerprint`` came from (e.g. a hub id and revision), kept with the collection
        and shown by :meth:`info`. ``limits`` sets the sizes at which this handle changes path
        (see :class:`indexes.Limits`; not saved).
        """
        path = Path(path)
        limits = as_limits(cls.default_limits if limits is None else limits)
        dim = checks.check_int("dim", dim, 1)
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not supported; expected one of {sorted(METRICS)}")
        budget = auto.parse_memory(memory_budget)
        if (
            isinstance(recall_target, bool)
            or not isinstance(recall_target, (int, float))
            or not 0 < recall_target <= 1
        ):
            raise ValueError(f"recall_target must be a number in (0, 1], received {recall_target!r}")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError(f"fingerprint must be a string or None, received {type(fingerprint).__name__}")
        if model_info is not None:
            try:
                model_info = json.loads(json.dumps(model_info, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"model_info must be a JSON-able dict, received {model_info!r} ({exc})"
                ) from exc
            if not isinstance(model_info, dict):
                raise ValueError(f"model_info must be a dict, received {type(model_info).__name__}")
        requested = index.strip() if isinstance(index, str) else index
        spec = "Flat" if requested == "auto" else requested
        template = Template(spec, dim, metric)  # validates the spec
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
        with files.storage_errors(path.parent if not path.exists() else path, "create the collection"):
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = persist.lock(path)
        try:
            try:
                old = persist.read_manifest(path) if (path / MANIFEST).exists() else None
            except ValueError:
                old = None  # a damaged collection being overwritten
            now = _now()
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "version": int((old or {}).get("version", 0)),
                "dim": dim,
                "metric": metric,
                "count": 0,
                "next_id": 0,
                "index_requested": requested,
                "index_spec": spec,
                "fingerprint": fingerprint,
                "model_info": model_info,
                "params": {},
                "memory_budget": budget,
                "recall_target": float(recall_target),
                "created": now,
                "updated": now,
                "segments": [],
                "template": None,
                "queries": None,
                "auto": None,
            }
            coll = cls(path, manifest, [], template, False, lock_fd, limits)
            coll._commit(dict(manifest, version=manifest["version"] + 1), previous=old)
        except BaseException:
            persist.unlock(lock_fd)
            raise
        return coll

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = False,
        read_only: bool = False,
        limits: Limits | None = None,
    ) -> Collection:
        """Open an existing collection.

        ``read_only=True`` takes no lock; several readers may open a collection while one writer
        saves it. Vectors, graphs and IVF lists are memory-mapped in every mode (``mmap=True`` is
        accepted for compatibility and implies ``read_only``). A writable open of a collection
        written in format 1 converts its manifest (see :mod:`indexes.legacy`). ``limits`` as in
        :meth:`create`.
        """
        path = local_folder(path, "Collection.open")
        limits = as_limits(cls.default_limits if limits is None else limits)
        read_only = read_only or mmap
        persist.read_manifest(path)  # a missing path or a non-collection fails here, before any lock file
        lock_fd = None if read_only else persist.lock(path)
        try:
            for attempt in range(10):
                manifest = persist.read_manifest(path)
                try:
                    coll = cls._load(path, manifest, read_only, lock_fd, limits)
                    break
                except (OSError, RuntimeError, ValueError) as exc:
                    # a concurrent save may have replaced this version while we loaded it: retry with
                    # the new manifest; otherwise the error is real
                    if attempt == 9 or persist.read_manifest(path).get("version") == manifest.get("version"):
                        if isinstance(exc, FileNotFoundError):
                            raise DamagedFileError(
                                Path(exc.filename or path), "the file is missing", _repair_hint(path)
                            ) from exc
                        raise
            if not read_only:
                if int(coll._manifest.get("format_version", FORMAT_VERSION)) < FORMAT_VERSION:
                    coll._convert_legacy()
                coll._collect_garbage([coll._manifest])
            return coll
        except BaseException:
            persist.unlock(lock_fd)
            raise

    @classmethod
    def _load(
        cls,
        path: Path,
        manifest: dict[str, Any],
        read_only: bool,
        lock_fd: int | None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Collection:
        if int(manifest["format_version"]) < 2:
            manifest = legacy.as_segments(path, manifest)
        dim, metric = int(manifest["dim"]), str(manifest["metric"])
        trained = None
        record = manifest.get("template")
        hint = _repair_hint(path)
        newer, newest = persist.newer_files(path, manifest)
        if newer:
            raise DamagedFileError(
                path / MANIFEST, persist.describe_newer(manifest, newer, newest), _newer_hint(path)
            )
        if record:
            file = path / record["file"]
            result = files.verify_file(file, record.get("digest"))
            if result:
                raise DamagedFileError(file, files.describe_damage(result), hint)
            trained = Template.read(manifest["index_spec"], dim, metric, file).trained
        template = Template(str(manifest["index_spec"]), dim, metric, trained)
        segments: list[Segment] = []
        try:
            for entry in manifest.get("segments") or []:
                segments.append(
                    Segment.open(path, entry, dim, template, verify_bytes=limits.verify_on_open_bytes)
                )
            count = sum(s.n_live for s in segments)
            if count != int(manifest["count"]):
                raise ValueError(
                    f"collection {path} is inconsistent: manifest says {manifest['count']} items but its "
                    f"segments hold {count}; {hint}"
                )
        except BaseException:
            for s in segments:
                s.close()
            raise
        return cls(path, manifest, segments, template, read_only, lock_fd, limits)

    def close(self) -> None:
        """Release files and the writer lock. Unsaved changes are discarded (with a warning)."""
        if self._closed:
            return
        if self._dirty and not self._read_only:
            logger.warning("closing collection %s with unsaved changes; call save() to keep them", self._path)
        self._closed = True
        for s in self._segments:
            s.close()
        if self._buffer is not None:
            self._buffer.close()
        self._discard_pending()
        self._filters.clear()
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
        """A handle dropped without close(): released like close() (which warns about unsaved changes)."""
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"Collection({str(self._path)!r}, count={len(self)}, dim={self._dim}, metric={self._metric!r}, "
            f"index={self._template.spec!r}, segments={len(self._segments)})"
        )

    # ================================================================ properties
    @property
    def _segments(self) -> list[Segment]:
        return self._segment_list

    @_segments.setter
    def _segments(self, segments: list[Segment]) -> None:
        """Every change of the segment list goes through here: cached filter results name rows of segments."""
        self._segment_list = segments
        with self._filter_lock:
            self._filters.clear()

    def __len__(self) -> int:
        return sum(p.n_live for p in self._parts())

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
    def model_info(self) -> dict[str, Any] | None:
        """Where the model that filled the collection came from (as given to :meth:`create`), or None."""
        info = self._manifest.get("model_info")
        return dict(info) if isinstance(info, dict) else None

    @property
    def index_spec(self) -> str:
        """The factory string of the index in use (``index_requested`` in :meth:`info` may be "auto")."""
        return self._template.spec

    @property
    def path(self) -> Path:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def limits(self) -> Limits:
        """The sizes at which this handle changes path (see :class:`indexes.Limits`)."""
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = as_limits(limits)
        with self._filter_lock:
            self._filters.clear()

    @property
    def exact_filter_max(self) -> int:
        """Filters matching at most this many items are searched exactly (``limits.exact_filter_max``)."""
        return self._limits.exact_filter_max

    @exact_filter_max.setter
    def exact_filter_max(self, value: int) -> None:
        self._limits = dataclasses.replace(self._limits, exact_filter_max=value)

    @property
    def params(self) -> dict[str, Any]:
        """Search parameters in use (``nprobe``, ``efSearch``, ``refine``) and how they were obtained."""
        return dict(self._params)

    @property
    def segments(self) -> list[dict[str, Any]]:
        """One small dict per segment (name, rows, removed rows, id range), oldest first."""
        return [
            {
                "name": s.name,
                "rows": s.rows,
                "deleted": s.n_deleted_rows,
                "id_min": s.id_min,
                "id_max": s.id_max,
            }
            for s in self._segments
        ]

    def ids(self) -> np.ndarray:
        """All ids, ascending: int64 [count]."""
        parts = [p.live_ids() for p in self._parts()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def fields(self) -> list[str]:
        """Metadata field names present in the collection (what ``where`` may filter on)."""
        return sorted(self._field_counts())

    def _field_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self._segments:
            own = dict(s.entry.get("fields") or {})
            for key, n in self._deleted_fields.get(s.name, {}).items():
                own[key] = own.get(key, 0) - n
            for key, n in own.items():
                counts[key] = counts.get(key, 0) + n
        if self._buffer is not None:
            for key, n in self._buffer.field_counts().items():
                counts[key] = counts.get(key, 0) + n
        return {k: v for k, v in counts.items() if v > 0}

    def _parts(self) -> tuple[Part, ...]:
        if self._buffer is not None and self._buffer.rows:
            return (*self._segments, self._buffer)
        return tuple(self._segments)

    @property
    def needs_rebuild(self) -> bool:
        """True when :meth:`rebuild` would help: many removed rows still stored, large growth since
        training, or (``index="auto"``) a choice that is due. ``save()`` handles auto collections."""
        return self._rebuild_reason() is not None

    def _rebuild_reason(self) -> str | None:
        n = len(self)
        stored = sum(p.rows for p in self._parts())
        dead = stored - n
        if dead > self._limits.tombstone_rebuild_fraction * max(stored, 1):
            return f"{dead} removed rows are still stored (compact() or rebuild() drops them)"
        if self._requested == "auto" and self._choice_due(n):
            return f"the index for {n} vectors is due to be chosen again (the next save does it)"
        trained_on = int(self._params.get("trained_on", 0))
        if self._template.needs_training and trained_on and n > self._limits.retrain_growth * trained_on:
            return f"index trained with {trained_on} vectors, collection now holds {n}"
        return None

    def info(self) -> dict[str, Any]:
        """Manifest fields plus live figures (count, segments, removed rows, memory, auto decision)."""
        parts = self._parts()
        stored = sum(p.rows for p in parts)
        on_disk = 0
        for entry in self._manifest.get("segments") or []:
            for _, digest in _files_of(entry):
                on_disk += int(digest["size"]) if digest else 0
        return {
            "path": str(self._path),
            "format_version": int(self._manifest.get("format_version", FORMAT_VERSION)),
            "version": self._manifest.get("version"),
            "count": len(self),
            "next_id": self._next_id,
            "dim": self._dim,
            "metric": self._metric,
            "score": SCORE_CONVENTION[self._metric],
            "fingerprint": self._fingerprint,
            "model_info": self.model_info,
            "index_spec": self._template.spec,
            "index_requested": self._requested,
            "index_kind": self._template.kind,
            "index_trained": self._template.ready or self._template.is_flat,
            "index_deferred": False,
            "params": dict(self._params),
            "auto": self._auto,
            "memory_budget": self._budget,
            "recall_target": self._recall_target,
            "fields": self.fields(),
            "segments": len(self._segments),
            "tombstones": stored - len(self),
            "unsaved_items": 0 if self._buffer is None else self._buffer.n_live,
            "bytes_on_disk": on_disk,
            "memory_bytes": self._memory_estimate(),
            "needs_rebuild": self.needs_rebuild,
            "rebuild_reason": self._rebuild_reason(),
            "read_only": self._read_only,
            "unsaved_changes": self._dirty,
            "created": self._manifest.get("created"),
            "updated": self._manifest.get("updated"),
        }

    def _memory_estimate(self) -> int:
        """Bytes this handle keeps in memory beyond memory-mapped files: the buffer, the template, masks."""
        total = 0 if self._buffer is None else self._buffer.nbytes * 2  # vectors + index of unsaved items
        if self._template.trained is not None and self._template.is_ivf:
            total += self._template.nlist * self._dim * 4
        total += sum(s.rows // 8 + s.deleted.nbytes for s in self._segments if s.deleted.size)
        return int(total)

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Raise ``ValueError`` unless the collection was built with ``fingerprint`` (None on either side passes)."""
        check_fingerprint(
            self.fingerprint,
            fingerprint,
            what=f"collection {self._path}",
            fix="search it with the model that made it, or re-embed the corpus with this model",
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
        return checks.as_vectors(x, what, self._dim, self._path, self._fingerprint, allow_1d)

    def _locate(self, ids: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, part index, row) of live ids; raises naming the unknown ones."""
        ids = checks.as_ids(ids)
        part_of, row_of = planner.locate(self._parts(), ids)
        if (row_of < 0).any():
            unknown = ids[row_of < 0]
            raise ValueError(
                f"cannot {what}: {unknown.size} unknown or removed id(s) {unknown[:5].tolist()}"
                f"{' ...' if unknown.size > 5 else ''}; valid ids come from add() or ids()"
            )
        return ids, part_of, row_of

    # ================================================================ add / remove / get
    def add(
        self,
        vectors: Any,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        ids: Any = None,
    ) -> np.ndarray:
        """Append vectors [n, d] (float64 is converted) with one metadata dict each; returns their ids.

        Ids are chosen by the collection (ascending, never reused). ``ids`` may name them instead,
        e.g. when copying a collection: strictly ascending and above every id ever allocated.
        """
        self._check_open(write=True)
        assert self._buffer is not None
        vecs = self._as_vectors(vectors, "vectors", allow_1d=False)  # [n, d]
        counts: dict[str, int] = {}
        n = vecs.shape[0]
        texts = validate_metadata(metadata, n, counts)
        if ids is None:
            if self._next_id + n - 1 > checks.MAX_ID:
                raise ValueError(
                    f"no ids left in collection {self._path}: ids are never reused and the next one is "
                    f"{self._next_id}, the largest is {checks.MAX_ID}; copy the items into a new collection"
                )
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            new_ids = checks.as_ids(ids)
            if new_ids.size != n:
                raise ValueError(f"ids has {new_ids.size} entries but {n} vectors were given")
            if n and (new_ids[0] < self._next_id or (np.diff(new_ids) <= 0).any()):
                raise ValueError(
                    f"explicit ids must be strictly ascending and >= {self._next_id} (ids are never reused), "
                    f"received {new_ids[:3].tolist()}..."
                )
            if n and int(new_ids[-1]) > checks.MAX_ID:
                raise ValueError(
                    f"ids must be at most {checks.MAX_ID} (the id after the last must fit in int64), "
                    f"received {new_ids[new_ids > checks.MAX_ID][:3].tolist()}"
                )
        if n == 0:
            return new_ids
        self._buffer.add(new_ids, vecs, texts, counts)
        self._next_id = int(new_ids[-1]) + 1
        self._changed()
        if self._buffer.nbytes >= self._buffer_limit():
            self._flush_buffer()
        return new_ids

    def remove(self, ids: Any) -> None:
        """Remove items by id (all must exist, or nothing is removed)."""
        self._check_open(write=True)
        assert self._buffer is not None
        ids, part_of, _ = self._locate(ids, "remove")
        ids = np.unique(ids)
        if ids.size == 0:
            return
        part_of, _ = planner.locate(self._parts(), ids)
        n_seg = len(self._segments)
        # first everything that can fail (reading metadata), then the changes, which cannot
        counts = {
            i: self._segments[i].meta.counts_for(ids[part_of == i]) for i in np.unique(part_of) if i < n_seg
        }
        in_buffer = ids[part_of == n_seg]
        if in_buffer.size:
            self._buffer.remove(in_buffer)  # one SQLite transaction: all or nothing
        for i, field_counts in counts.items():
            seg = self._segments[i]
            merged = self._deleted_fields.setdefault(seg.name, {})
            for key, c in field_counts.items():
                merged[key] = merged.get(key, 0) + c
            self._segments[i] = seg.with_deleted(np.union1d(seg.deleted, ids[part_of == i]), seg.entry)
            self._changed_deletes.add(seg.name)
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        with self._filter_lock:
            self._filters.clear()

    def reserve_ids(self, next_id: int) -> None:
        """Never hand out ids below ``next_id`` (e.g. after copying a collection whose ids ran higher)."""
        self._check_open(write=True)
        next_id = checks.check_int("next_id", next_id, 0)
        if next_id > checks.MAX_ID + 1:
            raise ValueError(
                f"next_id must be at most {checks.MAX_ID + 1} (ids are int64), received {next_id}"
            )
        if next_id > self._next_id:
            self._next_id = next_id
            self._dirty = True

    def get(self, ids: Any) -> list[dict[str, Any]]:
        """Metadata dict of each id, in order (new dicts: editing them changes nothing stored)."""
        self._check_open()
        ids, part_of, _ = self._locate(ids, "get metadata")
        parts = self._parts()
        out: list[dict[str, Any] | None] = [None] * ids.size
        for i in np.unique(part_of):
            sel = np.flatnonzero(part_of == i)
            for j, meta in zip(sel, parts[int(i)].meta.get(ids[sel])):
                out[j] = meta
        return out  # type: ignore[return-value]

    def vectors(self, ids: Any) -> np.ndarray:
        """The exact stored vectors of ``ids``: float32 [n, d]."""
        self._check_open()
        ids, _, _ = self._locate(ids, "get vectors")
        if ids.size == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        return planner.gather(self._parts(), ids)

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
        k = checks.check_int("k", k, 1)
        refine = (
            int(self._params.get("refine", 0)) if refine is None else checks.check_int("refine", refine, 1)
        )
        return self._search(q, k, where, refine, self._view())

    def _search(
        self, q: np.ndarray, k: int, where: dict[str, Any] | None, refine: int, view: planner.View
    ) -> tuple[np.ndarray, np.ndarray]:
        match = None
        if where is not None and not (isinstance(where, dict) and not where):  # {} filters nothing out
            match = self._match(where, view.parts)
        n_live = view.n_live if match is None else int(match.ids.size)
        if k > n_live and q.shape[0] * k * 12 > MAX_PADDING_BYTES:
            raise ValueError(
                f"k={k} asks for more results than the {n_live} items of collection {self._path}"
                f"{' matching the filter' if match is not None else ''}, and padding {q.shape[0]} result "
                f"rows to k would take {q.shape[0] * k * 12 / 2**30:.1f} GiB: ask for k <= {max(n_live, 1)} "
                "(rows are padded with id -1 up to k)"
            )
        if 0 < n_live < k:  # never ask FAISS for more results than items: pad afterwards
            scores, ids = planner.search(view, q, n_live, match, refine)
            pad_s, pad_i = planner.exact.padded(q.shape[0], k - n_live)
            return np.hstack([scores, pad_s]), np.hstack([ids, pad_i])
        return planner.search(view, q, k, match, refine)

    def _view(
        self,
        parts: Sequence[Part] | None = None,
        template: Template | None = None,
        knobs: dict[str, Any] | None = None,
    ) -> planner.View:
        parts = tuple(self._parts() if parts is None else parts)
        return planner.View(
            parts=parts,
            template=self._template if template is None else template,
            metric=self._metric,
            knobs=dict(self._params if knobs is None else knobs),
            n_live=sum(p.n_live for p in parts),
            limits=self._limits,
        )

    def _match(self, where: dict[str, Any], parts: Sequence[Part]) -> planner.Match:
        """The items ``where`` admits (cached until the next change; bounded by bytes and entries)."""
        try:
            key = json.dumps(where, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            key = None
        with self._filter_lock:
            if key is not None and key in self._filters:
                self._filters.move_to_end(key)
                return self._filters[key]
        condition, params = compile_where(where, self.fields())
        match = planner.Match.of(parts, [p.meta.matching(condition, params) for p in parts])
        if key is not None:
            with self._filter_lock:
                self._filters[key] = match
                total = sum(m.nbytes for m in self._filters.values())
                while self._filters and (
                    len(self._filters) > self._limits.filter_cache_entries
                    or total > self._limits.filter_cache_bytes
                ):
                    _, old = self._filters.popitem(last=False)
                    total -= old.nbytes
        return match

    # ================================================================ buffer and segments
    def _buffer_limit(self) -> int:
        if self._limits.buffer_bytes is not None:
            return int(self._limits.buffer_bytes)
        if self._budget:
            return max(64 << 10, int(self._budget) // 8)
        return DEFAULT_BUFFER_BYTES

    def _segment_max_rows(self) -> int:
        cap = self._limits.segment_max_bytes
        limit = cap if not self._budget else max(1 << 20, min(cap, int(self._budget) // 2))
        return max(self._limits.segment_min_rows, limit // (self._dim * 4 + 8))

    def _segment_name(self) -> str:
        return f"s{int(self._manifest.get('version', 0)) + 1:06d}-{secrets.token_hex(4)}"

    def _flush_buffer(self) -> None:
        """Write the buffer as a segment now (committed by the next save): bounds memory."""
        assert self._buffer is not None
        if not self._buffer.rows:
            return
        if not self._buffer.n_live:  # every buffered row was removed: nothing to write
            self._buffer.close()
            self._buffer = Buffer(self._dim, self._template)
            with self._filter_lock:
                self._filters.clear()
            return
        name = self._segment_name()
        generation = int(self._manifest.get("version", 0)) + 1
        with files.storage_errors(self._path, "write unsaved items to disk", self._buffer.nbytes * 2):
            try:
                entry = self._buffer.flush(self._path, name, generation)
            except BaseException:
                persist.remove_folder(self._path / name)
                raise
        self._pending.add(self._path / name)
        segment = Segment.open(self._path, entry, self._dim, self._template, check=False)
        self._segments.append(segment)
        self._deleted_fields[segment.name] = {}
        self._buffer.close()
        self._buffer = Buffer(self._dim, self._template)
        with self._filter_lock:
            self._filters.clear()

    def _discard_pending(self) -> None:
        """Delete files written for a commit that will not happen (closing without saving)."""
        if self._read_only:
            return
        for path in sorted(self._pending):
            if path.is_dir():
                persist.remove_folder(path)
            else:
                persist.remove_file(path)
        self._pending.clear()

    # ================================================================ save / commit
    def save(self) -> None:
        """Commit the changes atomically (see the module doc).

        Trains, tunes or chooses the index first when due; merges segments as the policy of
        :mod:`indexes.compaction` asks, in the same commit (merged segments' removed rows are dropped,
        not recorded). Writes only the new segment, merged segments, changed deletion records and
        the manifest.
        """
        self._check_open(write=True)
        assert self._buffer is not None
        self._before_save()
        if not self._dirty and self._manifest.get("version"):
            return
        version = int(self._manifest.get("version", 0)) + 1
        created: list[Path] = []
        opened: list[Segment] = []
        segments = list(self._segments)
        replaced: list[Segment] = []
        rewritten = 0
        needed = self._buffer.nbytes * 2 + 8 * sum(s.deleted.size for s in segments) + (1 << 20)
        try:
            with files.storage_errors(self._path, "save the collection", needed):
                files.check_free_space(self._path, needed, "save the collection")
                if self._buffer.rows and self._buffer.n_live:
                    name = f"s{version:06d}-{secrets.token_hex(4)}"
                    created.append(self._path / name)
                    entry = self._buffer.flush(self._path, name, version)
                    segment = Segment.open(self._path, entry, self._dim, self._template, check=False)
                    opened.append(segment)
                    segments.append(segment)
                runs = self._planned_merges(segments)
                if runs:
                    segments, replaced, rewritten = self._apply_merges(segments, runs, created)
                    opened.extend(s for s in segments if s.folder in created)
                for i, seg in enumerate(segments):
                    if seg.name not in self._changed_deletes:
                        continue
                    record = segments_module.write_deleted(
                        seg.folder,
                        seg.deleted,
                        version,
                        seg.n_deleted_rows,
                        self._deleted_fields.get(seg.name, {}),
                    )
                    created.append(seg.folder / record["file"])
                    segments[i] = seg.with_deleted(seg.deleted, dict(seg.entry, deleted=record))
                for seg in segments:
                    if (
                        seg.folder in created
                        or seg.folder in self._pending
                        or seg.name in self._changed_deletes
                    ):
                        persist.fsync_dir(seg.folder)
                self._commit(self._manifest_for(version, segments), previous=self._manifest)
        except BaseException:
            for seg in opened:
                seg.close()
            for path in created:
                if path.is_dir():
                    persist.remove_folder(path)
                else:
                    persist.remove_file(path)
            raise
        for seg in replaced:
            if seg not in opened:
                seg.close()
            self._deleted_fields.pop(seg.name, None)
        self._segments = segments
        for seg in segments:
            self._deleted_fields.setdefault(
                seg.name, dict((seg.entry.get("deleted") or {}).get("fields") or {})
            )
        if self._buffer.rows:
            self._buffer.close()
            self._buffer = Buffer(self._dim, self._template)
        self._changed_deletes.clear()
        with self._filter_lock:
            self._filters.clear()
        if rewritten:
            self._after_merge(rewritten)

    def _manifest_for(self, version: int, segments: Sequence[Segment]) -> dict[str, Any]:
        manifest = dict(self._manifest)
        manifest.update(
            format_version=FORMAT_VERSION,
            version=version,
            count=sum(s.n_live for s in segments),
            next_id=self._next_id,
            index_requested=self._requested,
            index_spec=self._template.spec,
            params=dict(self._params),
            fingerprint=self._fingerprint,
            updated=_now(),
            segments=[s.entry for s in segments],
            template=self._template_record,
            queries=self._queries_record,
            auto=self._auto,
        )
        return manifest

    def _commit(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Replace the manifest (the commit point), then delete what no manifest refers to any more."""
        with files.storage_errors(self._path, "save the collection"):
            persist.fsync_dir(self._path)  # new folders and files are durable before the manifest names them
            durable = persist.write_manifest(self._path, manifest)
        self._manifest = manifest
        self._pending.clear()
        self._dirty = False
        keep = [manifest] if durable or previous is None else [manifest, previous]
        self._collect_garbage(keep)

    def _collect_garbage(self, keep: list[dict[str, Any]]) -> None:
        if self._read_only:
            return
        try:
            persist.collect_garbage(self._path, keep, protect=self._pending | self._in_flight)
        except OSError as exc:  # pragma: no cover - garbage is harmless
            logger.warning("could not clean unused files of %s (%s)", self._path, exc)

    # ================================================================ maintenance (indexes.maintenance)
    def compact(self, force: bool = False) -> list[str]:
        """Merge segments as :mod:`indexes.compaction` plans (all of them, dropping every removed row,
        with ``force=True``) and commit; unsaved changes are saved first. Returns the new segment names."""
        self._check_open(write=True)
        return self._compact_now(force=force)

    def tune(
        self,
        recall_target: float | None = None,
        queries: Any = None,
        k: int = 10,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Tune ``nprobe`` / ``efSearch`` / ``refine`` to reach ``recall_target`` recall@k against exact search.

        ``queries`` [q, d] (with an optional ``where`` filter they are sent with) are used when given;
        otherwise the query sample stored with :meth:`set_tuning_queries`; otherwise, in a collection
        holding several ``modality`` values (images and captions), each modality's vectors as queries
        for the others; otherwise a sample of stored vectors (each query's own id left out). The
        recall reached per query set, the time per query and exact search's time on the same
        queries are kept in :attr:`params` and the manifest.
        """
        self._check_open()
        return self._tune_now(recall_target, queries, k, where)

    def set_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None:
        """Store query samples that tuning and ``index="auto"`` measure with, e.g.
        ``{"text->image": (caption_vectors, {"modality": "image"})}``; None forgets them.
        Written by the next save (at most 1,000 queries per set are kept)."""
        self._check_open(write=True)
        self._store_tuning_queries(queries)

    def rebuild(self, index: str | None = None) -> None:
        """Rebuild from the stored vectors: merge segments dropping removed rows, retrain, re-tune.

        ``index`` switches to another factory string or ``"auto"``; None keeps the requested one.
        The result is used at once and committed by the next :meth:`save`.
        """
        self._check_open(write=True)
        self._rebuild_now(index)

    def verify(self, repair: bool = False) -> Any:
        """Read every file, check every checksum and the agreement of ids, vectors, metadata and index.

        Returns a :class:`indexes.verify.Report` (``ok``, the problems file by file). ``repair=True``
        (writable handles) rebuilds what intact parts allow and commits; the report says what was lost.
        """
        from indexes.verify import verify_path

        self._check_open(write=repair)
        if repair and self._dirty:
            raise ValueError("save() or discard the unsaved changes before repairing the collection")
        report = verify_path(self._path, repair=repair, locked=not self._read_only)
        if report.repaired:  # reload what the repair committed; the writer lock stays with this handle
            manifest = persist.read_manifest(self._path)
            fresh = Collection._load(self._path, manifest, self._read_only, None, self._limits)
            for s in self._segments:
                s.close()
            if self._buffer is not None:
                self._buffer.close()
            lock = self._lock_fd
            self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_lock_fd"})
            self._lock_fd = lock
            fresh._closed = True
        return report

    def _choice_due(self, n: int) -> bool:
        decided = int((self._auto or {}).get("n", -1))
        if decided < 0:
            return n > 0 or self._template.spec != "Flat"
        return n >= 2 * decided or (n * 4 <= decided and decided > 0)


def _files_of(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    out = list((entry.get("files") or {}).items())
    for key in ("index", "deleted"):
        if entry.get(key):
            out.append((entry[key]["file"], entry[key].get("digest")))
    return out


def _newer_hint(path: Path) -> str:
    return (
        "restore the newest manifest.json if you have it, or run `retrieval check "
        f"{path} --repair` to keep this version (the newer files are deleted; their ids are never reused)"
    )


def _repair_hint(path: Path) -> str:
    return f"run `retrieval check {path} --repair` (or Collection.verify(repair=True)) or restore a backup"
