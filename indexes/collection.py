"""Collection: vectors, their metadata and a FAISS index, kept as immutable segments on disk.

Layout::

    <path>/manifest.json          format, dim, metric, count, index spec, fingerprint, tuned params,
                                  the segments of this version with a checksum of every file
                                  (the commit point: replaced atomically by every save)
    <path>/.committed             the version of the last durable commit (indexes.persist)
    <path>/s000012-3fa2c1d0/      a segment: vectors.npy, ids.npy, metadata.sqlite, its index
                                  (HNSW graph / IVF lists) and its deletion record (indexes.segment)
    <path>/t000009-5e0b77aa.faiss the trained IVF / codebook template segments share (trainable kinds)
    <path>/.writer.lock           held (flock) while a writable handle is open

Changes cost what they change. ``add`` puts items in an in-memory buffer (with its own index);
``remove`` records deletions; ``save()`` writes the buffer as a new segment, the deletion records
of the segments that changed and a new manifest, nothing else. A save is atomic and a crash at any
step leaves the last committed version readable; readers always see one whole version.

Where each part of the work lives (the bases of :class:`Collection`, one concept each):

* :mod:`indexes.opening` creating and opening; :mod:`indexes.saving` the buffer, saves, commits;
* :mod:`indexes.planner` the search plan, :mod:`indexes.filter_cache` filter results;
* :mod:`indexes.building` training and segment indexes, :mod:`indexes.tuning` search parameters,
  :mod:`indexes.choice` ``index="auto"``, :mod:`indexes.merging` merges (policy:
  :mod:`indexes.compaction`), :mod:`indexes.legacy` format-1 collections;
* :mod:`indexes.describe` ``info()``; :mod:`indexes.verify` checks and repairs;
* :class:`indexes.Limits` every size at which any of them changes path.

Scores are *higher is better*: inner products for ``metric="ip"`` (cosine on unit vectors) and
negated squared Euclidean distances for ``metric="l2"``. Missing results are padded with id
``-1`` and score ``-inf``.

One writer at a time (a flock); concurrent ``search`` calls on one handle are safe, mutating calls
(add, remove, save, compact, rebuild, tune) must not run concurrently with others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes import checks, files, opening, persist, planner
from indexes.building import IndexBuilding
from indexes.choice import IndexChoice
from indexes.describe import Description
from indexes.files import DamagedFileError
from indexes.filter_cache import FilterCache
from indexes.fingerprint import check_fingerprint
from indexes.legacy import Format1Conversion
from indexes.lexical.config import TextIndex, text_index_of
from indexes.lexical.searching import TextSearch
from indexes.limits import DEFAULT_LIMITS, Limits, as_limits
from indexes.location import local_folder
from indexes.merging import Merging
from indexes.metadata import compile_where, validate_metadata
from indexes.persist import FORMAT, FORMAT_VERSION, MANIFEST, CollectionBusyError
from indexes.saving import Saving
from indexes.segment import Buffer, Part, Segment
from indexes.template import Template
from indexes.tuning import Tuning

__all__ = ["FORMAT", "FORMAT_VERSION", "Collection", "CollectionBusyError"]

logger = logging.getLogger(__name__)

MAX_PADDING_BYTES = 1 << 30  # a search asking for more results than items may pad its answer up to this size


class Collection(
    Description, Saving, IndexBuilding, Tuning, IndexChoice, Merging, Format1Conversion, TextSearch
):
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
        self._filters = FilterCache()  # filter results, until the next change
        self._segments = segments
        self._template = template
        self._template_record: dict[str, Any] | None = manifest.get("template")
        self._queries_record: dict[str, Any] | None = manifest.get("queries")
        self._read_only = read_only
        self._lock_fd = lock_fd
        record = manifest.get("lexical")
        self._lexical: TextIndex | None = TextIndex.from_dict(record) if record else None  # the text index
        self._buffer: Buffer | None = None if read_only else Buffer(self._dim, template, self._lexical)
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
        text_fields: Sequence[str] | TextIndex | None = None,
        stemming: str | None = None,
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
        (see :class:`indexes.Limits`; not saved). ``text_fields`` declares a text index over those
        metadata fields (:meth:`search_text`, BM25; see :mod:`indexes.lexical`), ``stemming="porter"``
        reads English words by their stems; :meth:`set_text_fields` changes it later.
        """
        path = Path(path)
        limits = as_limits(cls.default_limits if limits is None else limits)
        manifest, template = opening.new_manifest(
            dim, metric, index, fingerprint, memory_budget, recall_target, model_info
        )
        text_index = text_index_of(text_fields, stemming)
        manifest["lexical"] = text_index.as_dict() if text_index else None
        opening.check_folder(path, overwrite)
        with files.storage_errors(path.parent if not path.exists() else path, "create the collection"):
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = persist.lock(path)
        try:
            try:
                old = persist.read_manifest(path) if (path / MANIFEST).exists() else None
            except ValueError:
                old = None  # a damaged collection being overwritten
            # versions never go back, not even over a collection being replaced
            manifest["version"] = max(int((old or {}).get("version", 0)), persist.read_committed(path), 0)
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
                                Path(exc.filename or path), "the file is missing", opening.repair_hint(path)
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
        manifest, segments, template = opening.read_version(path, manifest, limits)
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
        """The items ``where`` admits (cached until the next change, see :mod:`indexes.filter_cache`)."""

        def compute() -> planner.Match:
            condition, params = compile_where(where, self.fields())
            return planner.Match.of(parts, [p.meta.matching(condition, params) for p in parts])

        return self._filters.get(where, compute, self._limits)

    # ================================================================ buffer and segments
    # ================================================================ save / commit
    # ================================================================ checking (indexes.verify)
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
