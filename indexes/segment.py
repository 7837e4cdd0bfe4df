"""Segments: the immutable pieces a collection version is made of, and the in-memory buffer of new items.

A segment is a folder holding rows with ascending ids::

    s000012-3fa2c1d0/
        vectors.npy          float32 [rows, d], memory-mapped when opened
        ids.npy              int64 [rows], ascending
        metadata.sqlite      id -> JSON fields (opened read-only, immutable)
        index-000014-9c1e20aa.faiss  this segment's index (HNSW graph, codes), labelled by row; or
        lists-000014-9c1e20aa.ivf    its inverted lists of the collection's shared IVF (indexes.template)
        deleted-000019-04b2d6f1.npy  ids removed since the segment was written (sorted int64)

The first three files never change. The index and deletion files are written again under a new
generation number when the index is rebuilt or more rows are removed; the manifest names the
current ones, with a checksum of every file (:mod:`indexes.files`). Segments cover disjoint,
ascending id ranges, so an id is found by two binary searches.

:class:`Buffer` holds items added since the last save, in memory, with their own index; a save
(or a full buffer) writes it as a new segment.
"""

from __future__ import annotations

import errno
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import files, metadata
from indexes.files import DamagedFileError
from indexes.lexical.config import TextIndex
from indexes.lexical.store import BufferLexicon, Lexicon, SegmentLexicon, write_lexicon_record
from indexes.limits import DEFAULT_LIMITS
from indexes.metadata import MetadataStore
from indexes.template import PartIndex, Template

__all__ = [
    "Buffer",
    "Part",
    "Segment",
    "write_deleted",
    "write_index_record",
    "write_merged",
    "write_segment",
]

logger = logging.getLogger(__name__)

# Files up to this size are checksummed whole when a collection opens; larger ones get their size,
# header and last block checked (whole-file checks run in verify(), before merges and copies).
VERIFY_ON_OPEN_BYTES = DEFAULT_LIMITS.verify_on_open_bytes

_REPAIR_HINT = "run `retrieval check {path} --repair` (or Collection.verify(repair=True)) or restore a backup"


class Part:
    """What searches need from a segment or the buffer: ids, vectors, index, deletions, metadata."""

    ids: np.ndarray  # int64 [rows], ascending
    vectors: np.ndarray  # float32 [rows, d]
    meta: MetadataStore
    index: PartIndex | None
    deleted: np.ndarray  # sorted int64 ids removed from this part (may include ids not in it: format 1)
    lexicon: Lexicon | None = None  # the postings of its text fields (indexes.lexical), when declared

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None
        self._del_sel: tuple[Any, ...] | None = None

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def id_min(self) -> int:
        return int(self.ids[0]) if self.rows else -1

    @property
    def id_max(self) -> int:
        return int(self.ids[-1]) if self.rows else -1

    def _invalidate(self) -> None:
        self._mask = None
        self._del_sel = None

    def live_mask(self) -> np.ndarray | None:
        """bool [rows], False for removed rows; None when nothing is removed."""
        if self.deleted.size == 0:
            return None
        if self._mask is None:
            mask = np.ones(self.rows, dtype=bool)
            pos = self._positions(self.deleted)
            mask[pos[pos >= 0]] = False
            self._mask = mask
        return self._mask

    @property
    def n_deleted_rows(self) -> int:
        mask = self.live_mask()
        return 0 if mask is None else int(self.rows - mask.sum())

    @property
    def n_live(self) -> int:
        return self.rows - self.n_deleted_rows

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this part (removed or not), -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.rows == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        known = self.ids
        pos = np.searchsorted(known, ids)
        pos_c = np.minimum(pos, self.rows - 1)
        return np.where(np.asarray(known[pos_c]) == ids, pos_c, -1).astype(np.int64)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each live id, -1 where the id is absent or removed."""
        pos = self._positions(ids)
        mask = self.live_mask()
        if mask is not None:
            pos = np.where((pos >= 0) & mask[np.maximum(pos, 0)], pos, -1)
        return pos

    def live_ids(self) -> np.ndarray:
        mask = self.live_mask()
        return np.array(self.ids) if mask is None else np.asarray(self.ids)[mask]

    def field_counts(self) -> dict[str, int]:
        """Field -> number of live items carrying it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ selectors
    def labels_are_rows(self) -> bool:
        return self.index is None or self.index.labels == "rows"

    def selector(self, allowed: np.ndarray | None) -> tuple[Any, ...] | None:
        """An ID selector for this part's index admitting the rows where ``allowed`` (bool [rows]) is
        True, or every live row when ``allowed`` is None; None when every labelled vector qualifies.
        Returns a tuple whose first item is the selector (the rest keeps what it points to alive)."""
        if allowed is None:
            if self.deleted.size == 0:
                return None
            if self._del_sel is None:
                if self.labels_are_rows():
                    self._del_sel = _bitmap(self.live_mask())  # type: ignore[arg-type]
                else:
                    batch = faiss.IDSelectorBatch(self.deleted)
                    self._del_sel = (faiss.IDSelectorNot(batch), batch)
            return self._del_sel
        if self.labels_are_rows():
            return _bitmap(allowed)
        return (faiss.IDSelectorBatch(np.ascontiguousarray(np.asarray(self.ids)[allowed])),)

    def labels_to_ids(self, labels: np.ndarray) -> np.ndarray:
        """FAISS labels of this part's index -> collection ids (-1 stays -1)."""
        if not self.labels_are_rows():
            return labels
        bad = labels >= self.rows
        if bad.any():
            raise DamagedFileError(
                Path(getattr(self, "folder", "buffer")),
                f"its index returned row {int(labels[bad][0])} but the segment has {self.rows} rows",
            )
        return np.where(labels >= 0, np.asarray(self.ids)[np.maximum(labels, 0)], -1)


def _bitmap(mask: np.ndarray) -> tuple[Any, ...]:
    bits = np.packbits(mask.astype(np.uint8), bitorder="little")  # bit i of the map = row i
    return (faiss.IDSelectorBitmap(mask.shape[0], faiss.swig_ptr(bits)), bits)


class Segment(Part):
    """A segment folder opened for reading (its big arrays memory-mapped)."""

    def __init__(
        self,
        folder: Path,
        entry: dict[str, Any],
        vectors: np.ndarray,
        ids: np.ndarray,
        meta: MetadataStore,
        index: PartIndex | None,
        deleted: np.ndarray,
        lexicon: Lexicon | None = None,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.entry = entry
        self.vectors = vectors
        self.ids = ids
        self.meta = meta
        self.index = index
        self.deleted = deleted
        self.lexicon = lexicon

    @property
    def name(self) -> str:
        return self.folder.name

    def __repr__(self) -> str:
        return f"Segment({self.name}, rows={self.rows}, deleted={self.n_deleted_rows})"

    def field_counts(self) -> dict[str, int]:
        counts = dict(self.entry.get("fields") or {})
        for key, n in ((self.entry.get("deleted") or {}).get("fields") or {}).items():
            counts[key] = counts.get(key, 0) - int(n)
        return {k: v for k, v in counts.items() if v > 0}

    def close(self) -> None:
        self.meta.close()
        if self.lexicon is not None:
            self.lexicon.close()

    def with_deleted(self, deleted: np.ndarray, entry: dict[str, Any]) -> Segment:
        """The same segment with another deletion record (arrays and connections are shared)."""
        return Segment(
            self.folder, entry, self.vectors, self.ids, self.meta, self.index, deleted, self.lexicon
        )

    def with_index(self, index: PartIndex | None, entry: dict[str, Any]) -> Segment:
        return Segment(
            self.folder, entry, self.vectors, self.ids, self.meta, index, self.deleted, self.lexicon
        )

    def with_lexicon(self, lexicon: Lexicon | None, entry: dict[str, Any]) -> Segment:
        """The same segment with another lexicon (the caller closes the old one once unused)."""
        return Segment(
            self.folder, entry, self.vectors, self.ids, self.meta, self.index, self.deleted, lexicon
        )

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        root: Path,
        entry: dict[str, Any],
        dim: int,
        template: Template,
        check: bool = True,
        verify_bytes: int = VERIFY_ON_OPEN_BYTES,
    ) -> Segment:
        """Open the segment ``entry`` names under ``root``, checking what is cheap to check (``check``):
        files up to ``verify_bytes`` are checksummed whole, larger ones at both ends."""
        folder = root / entry["name"]
        rows = int(entry["rows"])
        hint = _REPAIR_HINT.format(path=root)
        if check:
            for name, digest in _entry_files(entry):
                _check_on_open(folder / name, digest, hint, verify_bytes)
        try:
            meta = MetadataStore.open_read_only(folder / "metadata.sqlite")
        except sqlite3.Error as exc:
            if not (folder / "metadata.sqlite").exists():
                raise FileNotFoundError(errno.ENOENT, "missing", str(folder / "metadata.sqlite")) from exc
            raise DamagedFileError(
                folder / "metadata.sqlite", f"SQLite cannot open it ({exc})", hint
            ) from exc
        try:
            vectors = _load_npy(folder / "vectors.npy", np.float32, (rows, dim), hint)
            ids = _load_npy(folder / "ids.npy", np.int64, (rows,), hint)
            if rows and (int(ids[0]) != int(entry["id_min"]) or int(ids[-1]) != int(entry["id_max"])):
                raise DamagedFileError(
                    folder / "ids.npy",
                    f"its ids run from {int(ids[0])} to {int(ids[-1])}, the manifest says "
                    f"{entry['id_min']} to {entry['id_max']}",
                    hint,
                )
            deleted = np.zeros(0, dtype=np.int64)
            record = entry.get("deleted")
            if record:
                with files.reading(folder / record["file"], hint):
                    deleted = np.asarray(np.load(folder / record["file"], allow_pickle=False), dtype=np.int64)
                if deleted.ndim != 1 or deleted.size != int(record["ids"]):
                    raise DamagedFileError(
                        folder / record["file"],
                        f"it lists {deleted.size} removed ids, the manifest says {record['ids']}",
                        hint,
                    )
            index = None
            spec = entry.get("index")
            if spec:
                index = _load_part(folder, spec, template)
                expected = rows if spec.get("labels", "rows") == "rows" else int(spec.get("ntotal", rows))
                if index.ntotal != expected:
                    raise DamagedFileError(
                        folder / spec["file"], f"it indexes {index.ntotal} vectors, expected {expected}", hint
                    )
            lexicon = None
            record = entry.get("lexical")
            if record:
                try:
                    lexicon = SegmentLexicon.open(folder, record, rows)
                except (sqlite3.Error, KeyError, ValueError) as exc:
                    raise DamagedFileError(
                        folder / record["file"], f"it cannot be read ({exc})", hint
                    ) from exc
        except BaseException:
            meta.close()
            raise
        return cls(folder, entry, vectors, ids, meta, index, deleted, lexicon)


def _load_part(folder: Path, spec: dict[str, Any], template: Template) -> PartIndex:
    path = folder / spec["file"]
    if spec["kind"] == "legacy":  # format 1: one whole index labelled by id
        from indexes import faiss_index as fi

        return PartIndex(fi.read_index(path, mmap=True, ivf=bool(spec.get("ivf"))), "faiss", labels="ids")
    part = template.load_part(path, spec["kind"])
    part.labels = spec.get("labels", "rows")
    return part


def _entry_files(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(file name, digest) of every file a segment entry references."""
    out = [(name, digest) for name, digest in (entry.get("files") or {}).items()]
    for key in ("index", "deleted", "lexical"):
        record = entry.get(key)
        if record:
            out.append((record["file"], record.get("digest")))
    return out


def _check_on_open(path: Path, digest: dict[str, Any] | None, hint: str, verify_bytes: int) -> None:
    if digest is None:
        if not path.exists():
            raise DamagedFileError(path, "the file is missing", hint)
        return
    size = int(digest["size"])
    if size <= verify_bytes:
        result = files.verify_file(path, digest, full=True)
    else:
        result = files.verify_file(path, digest, full=False) or files.verify_ends(path, digest)
    if result:
        raise DamagedFileError(path, files.describe_damage(result), hint)


def _load_npy(path: Path, dtype: type, shape: tuple[int, ...], hint: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DamagedFileError(path, f"it is not a readable .npy file ({exc})", hint) from exc
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise DamagedFileError(
            path, f"it holds {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}", hint
        )
    return array


# ---------------------------------------------------------------------------------------------- writing
def write_segment(
    root: Path,
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    meta: MetadataStore | None,
    template: Template,
    index: PartIndex | None = None,
    generation: int = 0,
    texts: list[str] | None = None,
    lexical: TextIndex | None = None,
    chunk_rows: int = DEFAULT_LIMITS.lexicon_chunk_rows,
) -> dict[str, Any]:
    """Write a new segment folder ``root/name`` and return its manifest entry (files fsynced, checksummed).

    Metadata comes from ``meta`` (copied whole) or ``texts`` (one JSON object per id). ``index`` is
    written when given, else built with ``template`` when it is ready. ``lexical``: the collection's
    text index (its lexicon is written too). Nothing outside the new folder is touched.
    """
    folder = root / name
    folder.mkdir()
    digests = {
        "vectors.npy": files.write_npy(folder / "vectors.npy", vectors),
        "ids.npy": files.write_npy(folder / "ids.npy", np.asarray(ids, dtype=np.int64)),
    }
    if texts is None:
        assert meta is not None
        meta.write_to(folder / "metadata.sqlite")
        counts = meta.field_counts()
    else:
        counts = metadata.create_file(folder / "metadata.sqlite", ids, texts)
    entry = _new_entry(folder, np.asarray(ids), digests, counts, lexical, generation, chunk_rows)
    if index is None and template.ready and entry["rows"]:
        index = template.build_part(np.load(folder / "vectors.npy", mmap_mode="r"))
    if index is not None and entry["rows"]:
        entry["index"] = write_index_record(folder, index, template, generation)
    files.fsync_dir(folder)
    return entry


def write_merged(
    root: Path,
    name: str,
    sources: Sequence[tuple[Segment, np.ndarray]],
    dim: int,
    template: Template | None,
    generation: int,
    lexical: TextIndex | None = None,
    chunk_rows: int = DEFAULT_LIMITS.lexicon_chunk_rows,
) -> dict[str, Any]:
    """Write the new segment ``root/name`` from rows of existing segments; returns its manifest entry.

    ``sources`` are (segment, rows) in id order, rows ascending: vectors and ids are streamed in blocks
    (the sources may be memory-mapped and larger than memory), metadata is copied by SQLite. An index
    is built with ``template`` when it is given and ready.
    """
    total = int(sum(rows.size for _, rows in sources))
    folder = root / name
    folder.mkdir()
    vec_out = files.NpyWriter(folder / "vectors.npy", np.float32, (total, dim))
    id_out = files.NpyWriter(folder / "ids.npy", np.int64, (total,))
    with vec_out, id_out:
        for seg, rows in sources:
            for lo in range(0, rows.size, 1 << 16):
                block = rows[lo : lo + (1 << 16)]
                vec_out.write(np.asarray(seg.vectors[block], dtype=np.float32))
                id_out.write(np.asarray(seg.ids[block]))
    keep = [(seg.folder / "metadata.sqlite", np.asarray(seg.ids[rows])) for seg, rows in sources]
    counts = metadata.merge_files(folder / "metadata.sqlite", keep)
    assert vec_out.digest is not None and id_out.digest is not None
    ids = np.load(folder / "ids.npy", mmap_mode="r")
    digests = {"vectors.npy": vec_out.digest, "ids.npy": id_out.digest}
    entry = _new_entry(folder, ids, digests, counts, lexical, generation, chunk_rows)
    if template is not None and template.ready and total:
        part = template.build_part(np.load(folder / "vectors.npy", mmap_mode="r"))
        if part is not None:
            entry["index"] = write_index_record(folder, part, template, generation)
    files.fsync_dir(folder)
    return entry


def _new_entry(
    folder: Path,
    ids: np.ndarray,
    digests: dict[str, Any],
    counts: dict[str, int],
    lexical: TextIndex | None = None,
    generation: int = 0,
    chunk_rows: int = DEFAULT_LIMITS.lexicon_chunk_rows,
) -> dict[str, Any]:
    """The manifest entry of a segment whose vectors, ids and metadata are written (digests of the first
    two given; the metadata file is fsynced and checksummed here).

    Every new segment passes here once its metadata is final (flushed buffers, merges, repairs, bulk
    builds): files derived from a segment's metadata (a per-segment side index over its fields) are
    written and recorded in ``files`` at this point, and merges, deletion records and garbage
    collection then carry them with the segment. The lexicon of the collection's text fields
    (``lexical``, :mod:`indexes.lexical`) is that file: written here, under ``generation``.
    """
    files.fsync_file(folder / "metadata.sqlite")
    rows = int(ids.shape[0])
    record = write_lexicon_record(folder, lexical, generation, rows, chunk_rows) if lexical else None
    return {
        "name": folder.name,
        "rows": rows,
        "id_min": int(ids[0]) if rows else -1,
        "id_max": int(ids[-1]) if rows else -1,
        "files": {**digests, "metadata.sqlite": files.digest_file(folder / "metadata.sqlite")},
        "fields": dict(sorted(counts.items())),
        "index": None,
        "deleted": None,
        **({"lexical": record} if record else {}),
    }


def write_index_record(folder: Path, index: PartIndex, template: Template, generation: int) -> dict[str, Any]:
    """Write a segment's index under generation ``generation``; returns the entry's ``index`` record."""
    kind = index.kind
    stem, suffix = ("lists", "ivf") if kind == "lists" else ("index", "faiss")
    file = f"{stem}-{generation:06d}-{secrets.token_hex(4)}.{suffix}"
    digest = template.write_part(index, folder / file)
    return {"file": file, "kind": kind, "labels": "rows", "spec": template.spec, "digest": digest}


def write_deleted(
    folder: Path, deleted: np.ndarray, generation: int, rows: int, counts: dict[str, int]
) -> dict[str, Any]:
    """Write a segment's deletion record; returns the entry's ``deleted`` record."""
    file = f"deleted-{generation:06d}-{secrets.token_hex(4)}.npy"
    digest = files.write_npy(folder / file, np.asarray(deleted, dtype=np.int64))
    return {
        "file": file,
        "ids": int(deleted.size),
        "rows": int(rows),
        "fields": dict(sorted(counts.items())),
        "digest": digest,
    }


# ---------------------------------------------------------------------------------------------- buffer
class Buffer(Part):
    """Items added since the last save: vectors, ids and metadata in memory, with their own index."""

    def __init__(self, dim: int, template: Template, lexical: TextIndex | None = None) -> None:
        super().__init__()
        self.lexical = lexical  # the collection's text index: flushed segments get its lexicon
        self.lexicon: BufferLexicon | None = None  # built on the first text search (indexes.lexical)
        self.dim = dim
        self._vecs = np.empty((0, dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._n = 0
        self.meta = MetadataStore.in_memory()
        self.template = template
        self.index = template.new_part()
        self.deleted = np.zeros(0, dtype=np.int64)

    @property
    def ids(self) -> np.ndarray:  # type: ignore[override]
        return self._ids[: self._n]

    @property
    def vectors(self) -> np.ndarray:  # type: ignore[override]
        return self._vecs[: self._n]

    @property
    def nbytes(self) -> int:
        return self._n * (self.dim * 4 + 8)

    def field_counts(self) -> dict[str, int]:
        return self.meta.field_counts()

    def close(self) -> None:
        self.meta.close()

    def add(self, ids: np.ndarray, vectors: np.ndarray, texts: list[str], counts: dict[str, int]) -> None:
        n = ids.shape[0]
        if n == 0:
            return
        assert self._n == 0 or ids[0] > self._ids[self._n - 1]
        self.meta.insert(ids, texts, counts)  # first: it is the step that can fail on bad input
        need = self._n + n
        if need > self._ids.shape[0]:
            cap = max(need, int(self._ids.shape[0] * 1.5) + 1024)
            vecs = np.empty((cap, self.dim), dtype=np.float32)
            vecs[: self._n] = self._vecs[: self._n]
            new_ids = np.empty(cap, dtype=np.int64)
            new_ids[: self._n] = self._ids[: self._n]
            self._vecs, self._ids = vecs, new_ids
        self._vecs[self._n : need] = vectors
        self._ids[self._n : need] = ids
        first = self._n
        self._n = need
        if self.index is not None:
            self.template.add(self.index, vectors, first)
        self._invalidate()

    def remove(self, ids: np.ndarray) -> None:
        """Forget live ``ids`` (all in this buffer): metadata is deleted, rows are masked."""
        self.meta.delete(ids)
        self.deleted = np.union1d(self.deleted, ids)
        self._invalidate()

    def live_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [m], vectors [m, d]) of the live rows (views when nothing was removed)."""
        mask = self.live_mask()
        if mask is None:
            return self.ids, self.vectors
        return self.ids[mask], self.vectors[mask]

    def flush(
        self, root: Path, name: str, generation: int, chunk_rows: int = DEFAULT_LIMITS.lexicon_chunk_rows
    ) -> dict[str, Any]:
        """Write the live rows as the new segment ``root/name``; returns its entry (the buffer is unchanged)."""
        ids, vecs = self.live_arrays()
        index = self.index if self.deleted.size == 0 else None  # rebuilt without the removed rows
        return write_segment(
            root, name, ids, vecs, self.meta, self.template, index, generation,
            lexical=self.lexical, chunk_rows=chunk_rows,
        )  # fmt: skip
