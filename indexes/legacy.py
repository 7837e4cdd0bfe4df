"""Collections written in format 1 (one immutable data folder per version), read as one segment.

Format 1 kept, per version, a folder ``v<version>-<random>/`` with ``index.faiss`` (one index over
the whole collection, labelled by id; HNSW removals as ``tombstones.npy``), ``vectors.npy`` /
``ids.npy`` (live rows only) and ``metadata.sqlite``. Those files are exactly a segment whose index
is labelled by id, so such a collection opens as a format-2 collection of one segment with no
recorded checksums. Read-only opens use it as it is; the first writable open converts the
manifest (reading every file once to record its checksum, writing no data; an IVF index's
trained quantizer is written once as the template new segments share).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import faiss_index as fi
from indexes import files
from indexes.metadata import MetadataStore
from indexes.segment import Buffer
from indexes.template import Template

__all__ = ["Format1Conversion", "as_segments", "checksum", "template_of"]

logger = logging.getLogger(__name__)


def as_segments(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A format-2 manifest (in memory) describing the format-1 collection ``manifest`` at ``path``."""
    data = manifest.get("data")
    out = {k: v for k, v in manifest.items() if k != "data"}
    out["format_version"] = 1  # still format 1 on disk until converted
    out["segments"] = []
    out["template"] = None
    if not data:
        return out
    folder = path / str(data)
    hint = f"format 1 kept no checksums: restore {folder.name} from a backup (`retrieval check {path}` lists the damage)"
    if not folder.is_dir():
        raise files.DamagedFileError(folder, "the data folder the manifest names is missing", hint)
    with files.reading(folder / "ids.npy", hint):
        ids = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise ValueError(f"it holds {ids.dtype}{list(ids.shape)}, expected int64[n]")
    rows = int(ids.shape[0])
    with files.reading(folder / "tombstones.npy", hint):
        tomb = np.load(folder / "tombstones.npy", allow_pickle=False)
        if tomb.ndim != 1 or tomb.dtype != np.int64:
            raise ValueError(f"it holds {tomb.dtype}{list(tomb.shape)}, expected int64[n]")
    with files.reading(folder / "metadata.sqlite", hint):
        meta = MetadataStore.open_read_only(folder / "metadata.sqlite")
        try:
            fields = meta.field_counts()
        finally:
            meta.close()
    with files.reading(folder / "index.faiss", hint):
        index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    is_ivf = faiss.try_extract_index_ivf(index) is not None
    entry: dict[str, Any] = {
        "name": str(data),
        "rows": rows,
        "id_min": int(ids[0]) if rows else -1,
        "id_max": int(ids[-1]) if rows else -1,
        "files": {"vectors.npy": None, "ids.npy": None, "metadata.sqlite": None},
        "fields": fields,
        "index": None,
        "deleted": None,
    }
    if index.is_trained:
        entry["index"] = {
            "file": "index.faiss",
            "kind": "legacy",
            "labels": "ids",
            "ivf": is_ivf,
            "ntotal": int(index.ntotal),
            "spec": manifest.get("index_spec"),
            "digest": None,
        }
    if tomb.size:
        entry["deleted"] = {
            "file": "tombstones.npy",
            "ids": int(tomb.size),
            "rows": 0,
            "fields": {},
            "digest": None,
        }
    del index
    out["segments"] = [entry] if rows or tomb.size else []
    return out


def checksum(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The same manifest with the digest of every file of its format-1 segment recorded."""
    out = dict(manifest)
    segments = []
    for entry in manifest.get("segments") or []:
        entry = dict(entry)
        folder = path / entry["name"]
        entry["files"] = {name: files.digest_file(folder / name) for name in entry["files"]}
        for key in ("index", "deleted"):
            if entry.get(key):
                entry[key] = dict(entry[key], digest=files.digest_file(folder / entry[key]["file"]))
        segments.append(entry)
    out["segments"] = segments
    return out


def template_of(path: Path, entry: dict[str, Any], spec: str, dim: int, metric: str) -> faiss.Index | None:
    """The trained, empty index that new segments of a converted trainable collection share."""
    index_record = entry.get("index")
    if not index_record:
        return None
    index = fi.read_index(path / entry["name"] / index_record["file"])
    if faiss.try_extract_index_ivf(index) is not None:
        index.reset()  # keeps the trained quantizer, codebooks and pre-transform; drops the vectors
        return index
    inner = index
    while isinstance(faiss.downcast_index(inner), (faiss.IndexIDMap2, faiss.IndexIDMap)):
        inner = faiss.downcast_index(inner).index
    inner = faiss.downcast_index(inner)
    if not fi.describe(inner).needs_training:
        return None
    template = faiss.clone_index(inner)
    template.reset()
    return template


class Format1Conversion:
    """The first writable open of a format-1 collection (a base of :class:`indexes.collection.Collection`)."""

    def _convert_legacy(self) -> None:
        """Record checksums of a format-1 collection, extract its trained template, and commit as format 2."""
        manifest = checksum(self.path, self._manifest)
        template = self._template
        if template.needs_training and manifest.get("segments"):
            trained = template_of(self.path, manifest["segments"][0], template.spec, self.dim, self.metric)
            if trained is not None:
                template = Template(template.spec, self.dim, self.metric, trained)
                name = f"t{self._generation():06d}-{secrets.token_hex(4)}.faiss"
                digest = template.write(self.path / name)
                self._template_record = {
                    "file": name,
                    "digest": digest,
                    "trained_on": int(self._params.get("trained_on", 0)),
                }
        self._template = template
        segments = []
        for seg, entry in zip(self._segments, manifest.get("segments") or []):
            segments.append(seg.with_deleted(seg.deleted, entry))
        self._segments = segments
        assert self._buffer is not None
        self._buffer.close()
        self._buffer = Buffer(self.dim, template)
        if self._requested == "auto":
            self._auto = {
                "n": len(self),
                "chosen": template.spec,
                "reason": "kept from a format-1 collection",
            }
        new = self._manifest_for(self._generation(), segments)
        self._commit(new, previous=None)
        logger.info("converted collection %s to format 2 (checksums recorded, no data rewritten)", self.path)
