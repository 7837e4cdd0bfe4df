"""The served state: collections and models loaded once, shared safely by concurrent requests.

Each collection is owned by one thread (a single-worker executor): every search, metadata
read and reload of that collection runs there, one at a time. That keeps the collection's
FAISS index and SQLite connection away from concurrent use (SQLite connections are tied to
their thread) and makes a reload a plain swap between two queued operations: no request
ever sees a half-reopened collection. Query encoding, the expensive part, runs in a shared
pool of worker threads and overlaps freely.

A reload reopens a collection whose files changed on disk (another process added or removed
items and saved): checked at most every ``reload_interval`` seconds when a request arrives,
or forced through :meth:`ServedCollection.reload`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from retrieval.serve.errors import ApiError, bad_request, not_found
from retrieval.serve.inputs import json_safe

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Metadata fields that may hold an item's image file, in order of preference.
IMAGE_FIELDS = ("path", "image_path", "image")
# Image types the media endpoint serves, by suffix.
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}
# Files that change on reads or while a writer works; they never trigger a reload on their own.
_VOLATILE_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".tmp")


class Encoder(Protocol):
    """What the service needs from a model (a :class:`retrieval.model.TwinEncoder` fits)."""

    def encode_texts(self, texts: Sequence[str]) -> Any: ...  # [N, D] unit rows (Tensor or array)

    def encode_images(self, images: Sequence[Any]) -> Any: ...  # [N, D] unit rows

    def fingerprint(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its score (higher is closer) and its metadata."""

    id: int
    score: float
    metadata: dict[str, Any]


def _as_array(vectors: Any) -> np.ndarray:
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))


class ModelRunner:
    """A model shared by every collection that uses it.

    Image encoding runs concurrently; text encoding is serialised because tokenizers keep
    per-call state (padding/truncation settings) that concurrent calls could trample.
    """

    def __init__(self, model: Encoder, source: str) -> None:
        self.model = model
        self.source = source
        self.fingerprint = str(model.fingerprint())
        self._text_lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._text_lock:
            return _as_array(self.model.encode_texts(list(texts)))  # [N, D]

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return _as_array(self.model.encode_images(list(images)))  # [N, D]


def load_model(directory: str, device: str | None = None) -> ModelRunner:
    """Load a saved :class:`~retrieval.model.TwinEncoder` (safetensors + JSON, no pickle)."""
    from retrieval.model import TwinEncoder

    model = TwinEncoder.load(directory, device=device)
    model.eval()
    return ModelRunner(model, directory)


def _open_collection(path: Path, mmap: bool) -> Any:
    from indexes import Collection

    return Collection.open(path, mmap=mmap, read_only=True)


def _disk_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What the collection's files look like now; a change means another process saved it."""
    entries = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name.endswith(_VOLATILE_SUFFIXES):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.is_file():
                    entries.append((entry.name, st.st_mtime_ns, st.st_size))
    except FileNotFoundError:
        return ()
    return tuple(sorted(entries))


class ServedCollection:
    """One collection served under ``name``; see the module docstring for the threading rules."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        model: ModelRunner | None = None,
        *,
        media_root: str | os.PathLike[str] | None = None,
        reload_interval: float = 2.0,
        mmap: bool = False,
        hidden_fields: Sequence[str] = (),
        opener: Callable[[Path, bool], Any] = _open_collection,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.model = model
        self.media_root = Path(media_root).resolve() if media_root is not None else None
        self.reload_interval = reload_interval
        self.hidden_fields = frozenset(hidden_fields)
        self.reloads = 0
        self._mmap = mmap
        self._opener = opener
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"collection-{name}")
        self._collection: Any = None
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._checked_at = 0.0
        self.call(self._open_initial)

    # -- running work in the owner thread -------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this collection's thread and wait for it (synchronous callers)."""
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this collection's thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        def _close() -> None:
            if self._collection is not None:
                self._collection.close()
                self._collection = None

        try:
            self._executor.submit(_close).result()
        finally:
            self._executor.shutdown(wait=True)

    # -- opening and reloading (owner thread only) ----------------------------------------

    def _check_model(self, collection: Any) -> None:
        stored = getattr(collection, "fingerprint", None)
        if self.model is not None and stored and stored != self.model.fingerprint:
            raise ValueError(
                f"collection {self.name!r} at {self.path} was built by model {stored}, but the model from "
                f"{self.model.source} has fingerprint {self.model.fingerprint}: serve it with the model that built it"
            )

    def _open_initial(self) -> None:
        signature = _disk_signature(self.path)
        collection = self._opener(self.path, self._mmap)
        try:
            self._check_model(collection)
        except BaseException:
            collection.close()
            raise
        self._collection, self._signature = collection, signature
        self._checked_at = time.monotonic()

    def _reload(self, force: bool) -> bool:
        """Reopen the collection if its files changed (or ``force``); keep the old one on failure."""
        signature = _disk_signature(self.path)
        self._checked_at = time.monotonic()
        if not force and signature == self._signature:
            return False
        try:
            fresh = self._opener(self.path, self._mmap)
            self._check_model(fresh)
        except Exception as exc:  # a writer may be mid-save: keep serving the old state
            logger.warning(
                "collection %r changed on disk but could not be reopened (%s); retrying later", self.name, exc
            )
            if force:
                raise bad_request("reload_failed", f"cannot reopen collection {self.name!r}: {exc}") from None
            return False
        old, self._collection, self._signature = self._collection, fresh, signature
        self.reloads += 1
        if old is not None:
            old.close()
        logger.info("collection %r reloaded: %d items", self.name, len(fresh))
        return True

    def _fresh(self) -> Any:
        if self.reload_interval > 0 and time.monotonic() - self._checked_at >= self.reload_interval:
            self._reload(force=False)
        return self._collection

    def reload(self, force: bool = True) -> bool:
        """Reopen the collection now (synchronous); returns whether it was reopened."""
        return self.call(self._reload, force)

    # -- queries (owner thread only) -------------------------------------------------------

    def info(self) -> dict[str, Any]:
        c = self._fresh()
        return {
            "name": self.name,
            "count": len(c),
            "dim": int(c.dim),
            "metric": str(c.metric),
            "index_spec": str(c.index_spec),
            "fingerprint": c.fingerprint,
            "model_fingerprint": self.model.fingerprint if self.model else None,
            "fields": sorted(c.fields()),
            "text_search": self.model is not None,
            "image_search": self.model is not None,
            "media": self.media_root is not None,
            "reloads": self.reloads,
        }

    def fields(self) -> list[str]:
        return list(self._fresh().fields())

    def dim(self) -> int:
        return int(self._fresh().dim)

    @staticmethod
    def _visible(metadata: dict[str, Any]) -> dict[str, Any]:
        # Hidden fields are dropped when responses are built: the image endpoint still needs them.
        return json_safe(dict(metadata))

    def metadata(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Metadata (JSON-safe) of the ids that exist; unknown or removed ids are left out."""
        c = self._fresh()
        return {i: self._visible(m) for i, m in self._get_existing(c, ids).items()}

    @staticmethod
    def _get_existing(c: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        try:
            return dict(zip(ids, c.get(np.asarray(ids, dtype=np.int64)), strict=True))
        except (KeyError, ValueError, IndexError):
            found = {}
            for i in ids:
                try:
                    found[i] = c.get(np.asarray([i], dtype=np.int64))[0]
                except (KeyError, ValueError, IndexError):
                    continue
            return found

    def item_vector(self, item_id: int) -> np.ndarray:
        c = self._fresh()
        try:
            return np.asarray(c.vectors(np.asarray([item_id], dtype=np.int64)), dtype=np.float32)  # [1, D]
        except (KeyError, ValueError, IndexError):
            raise not_found(
                "unknown_item", f"collection {self.name!r} has no item with id {item_id}"
            ) from None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: Mapping[str, Any] | None = None,
        modality: str | None = None,
        *,
        fetch: int | None = None,
        deduplicate: bool = False,
    ) -> list[list[Hit]]:
        """Top-``k`` hits (with metadata) per query row; ``fetch`` asks the index for more
        candidates (kept without metadata beyond ``k``); ``deduplicate`` drops near-copies."""
        c = self._fresh()
        fields = set(c.fields())
        where = dict(where or {})
        if (
            modality is not None
            and "modality" in fields
            and where.setdefault("modality", modality) != modality
        ):
            raise bad_request(
                "bad_filter", f"modality={modality!r} contradicts the filter modality={where['modality']!r}"
            )
        unknown = sorted(set(where) - fields)
        if unknown:
            raise bad_request(
                "unknown_field",
                f"unknown filter field(s) {unknown}; this collection has fields {sorted(fields)}",
            )
        if queries.shape[1] != c.dim:
            raise bad_request(
                "bad_embedding",
                f"query vector has dim {queries.shape[1]}, collection {self.name!r} has dim {c.dim}",
            )
        want = max(k, fetch or 0)
        try:
            scores, ids = c.search(queries, want, where=where or None)  # [n, want] each
        except ValueError as exc:
            raise bad_request("bad_query", f"search refused: {exc}") from None
        results = []
        for row_scores, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            row_ids, row_scores = row_ids[keep], row_scores[keep]
            if deduplicate and len(row_ids) > 1:
                order = _unique_rows(np.asarray(c.vectors(row_ids), dtype=np.float32))
                row_ids, row_scores = row_ids[order], row_scores[order]
            meta = self._get_existing(c, row_ids[:k].tolist())
            hits = [
                Hit(int(i), float(s), self._visible(meta[int(i)]))
                for i, s in zip(row_ids[:k], row_scores[:k])
                if int(i) in meta
            ]
            hits += [Hit(int(i), float(s), {}) for i, s in zip(row_ids[k:], row_scores[k:])]
            results.append(hits)
        return results

    def media(self, item_id: int) -> tuple[Path | bytes, str]:
        """The image file of an item, if it lies inside the media root: ``(path or bytes, media type)``."""
        if self.media_root is None:
            raise not_found(
                "no_media_root",
                f"collection {self.name!r} has no media root, so its images are not served; "
                "start the server with --media-root to declare the folder holding them",
            )
        c = self._fresh()
        meta = self._get_existing(c, [item_id]).get(int(item_id))
        if meta is None:
            raise not_found("unknown_item", f"collection {self.name!r} has no item with id {item_id}")
        ref = next((meta[f] for f in IMAGE_FIELDS if isinstance(meta.get(f), str) and meta[f]), None)
        if ref is None:
            raise not_found("no_image", f"item {item_id} of {self.name!r} has no image file")
        return resolve_media(self.media_root, ref)


def _unique_rows(vectors: np.ndarray, threshold: float = 0.94) -> np.ndarray:
    """Indices of the rows kept when each row closer than ``threshold`` (cosine) to an earlier
    kept row is dropped; the idea of clip-retrieval's result de-duplication."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [n, 1]
    unit = vectors / np.maximum(norms, 1e-12)  # [n, d]
    sims = unit @ unit.T  # [n, n]
    kept: list[int] = []
    for i in range(len(unit)):
        if not kept or sims[i, kept].max() < threshold:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_media(root: Path, ref: str) -> tuple[Path | bytes, str]:
    """Resolve an item's image reference against ``root``; anything that ends up outside the
    root (``..``, absolute paths elsewhere, symlinks pointing out) is refused with a 403."""
    from retrieval.data.images import TAR_PREFIX, read_ref_bytes, split_tar_ref

    root_real = os.path.realpath(root)
    member = None
    target = ref
    if ref.startswith(TAR_PREFIX):
        try:
            target, member = split_tar_ref(ref)
        except ValueError as exc:
            raise not_found("no_image", str(exc)) from None
    candidate = Path(target) if os.path.isabs(target) else root / target
    real = os.path.realpath(candidate)
    if not _inside(real, root_real):
        raise ApiError(
            403, "outside_media_root", "the item's image lies outside the collection's media root; refused"
        )
    suffix = Path(member if member is not None else real).suffix.lower()
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None:
        raise ApiError(403, "not_an_image", f"the item's file type {suffix or '(none)'!r} is not served")
    if not os.path.isfile(real):
        raise not_found("missing_image", "the item's image file does not exist")
    if member is None:
        return Path(real), media_type
    try:
        return read_ref_bytes(f"{TAR_PREFIX}{real}#{member}"), media_type
    except ValueError:
        raise not_found("missing_image", "the item's image is not in its shard") from None
