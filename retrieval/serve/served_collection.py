"""A :class:`ServedCollection`: one collection and its model, shared safely by concurrent requests.

Each collection is owned by one thread (a single-worker executor): every search, metadata
read and the swap of a reopened collection run there, one at a time. That keeps the
collection's FAISS index and SQLite connection away from concurrent use and makes a reload a
plain swap between two queued operations: no request ever sees a half-reopened collection.
Query encoding, the expensive part, runs in a shared pool of worker threads
(:mod:`retrieval.serve.batching` batches concurrent queries).

A reload reopens a collection that another process changed and saved (added or removed
items): a local folder whose files changed on disk, or a collection on a Milvus server whose
commit token (:meth:`indexes.milvus.MilvusCollection.commit_token`) moved. Checked at most
every ``reload_interval`` seconds when a request arrives,
then opened in a helper thread while queries go on against the old version, and swapped in
by the owner thread; or forced (synchronously) through :meth:`ServedCollection.reload`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retrieval.search import Expansion, Hit, Hubness, Hybrid, Searcher
from retrieval.serve.batching import ModelRunner
from retrieval.serve.errors import bad_request, not_found
from retrieval.serve.inputs import json_safe
from retrieval.serve.media import IMAGE_FIELDS, resolve_media
from retrieval.serve.privacy import PathScrubber

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Files that change on reads or while a writer works; they never trigger a reload on their own.
_VOLATILE_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".tmp")
# Items counted by modality for the collection's info (reading their metadata once per version);
# larger collections report no counts rather than stall their queries.
MODALITY_COUNT_LIMIT = 200_000


def _open_collection(location: str, mmap: bool) -> Any:
    from indexes import open_collection

    return open_collection(location, mmap=mmap, read_only=True)


def _disk_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What a local collection's files look like now; a change means another process saved it."""
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
    """One collection served under ``name``; see the module docstring for the threading rules.

    Searches go through a :class:`~retrieval.search.Searcher` pairing the collection with its
    model; a reload builds a new searcher on the reopened collection and swaps it in.
    """

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
        opener: Callable[[str, bool], Any] = _open_collection,
        hubness: str | None = None,
        rerank: int = 0,
        paths: PathScrubber | None = None,
        expand: bool = False,
    ) -> None:
        self.name = name
        self.paths = paths if paths is not None else PathScrubber(show=True)  # how server paths are shown
        self.hubness = Hubness(hubness) if hubness else None  # query-time hubness correction
        self.rerank = int(rerank)  # dense top-N re-ranked by the model's match head
        self.expansion = Expansion() if expand else None  # cross-modal queries expanded through the bank
        self.location = os.fspath(path)  # a folder or a Milvus location (see indexes.location)
        self.path = Path(self.location)
        self.model = model
        if media_root is not None and not Path(media_root).is_dir():
            raise ValueError(
                f"media root {media_root} of collection {name!r} is not a folder: give the folder of its images"
            )
        self.media_root = Path(media_root).resolve() if media_root is not None else None
        self.reload_interval = reload_interval
        self.hidden_fields = frozenset(hidden_fields)
        self.reloads = 0
        self._mmap = mmap
        self._opener = opener
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"collection-{name}")
        self._searcher: Searcher | None = None
        self._counts: tuple[int, dict[str, int] | None] = (0, None)  # (id of the searcher, its counts)
        self._signature: Any = ()
        self._checked_at = 0.0
        self._reloading = False  # a background reopen is under way
        try:
            self.call(self._open_initial)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    # -- running work in the owner thread -------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this collection's thread and wait for it (synchronous callers)."""
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this collection's thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        def _close() -> None:
            if self._searcher is not None:
                self._searcher.collection.close()
                self._searcher = None

        try:
            self._executor.submit(_close).result()
        finally:
            self._executor.shutdown(wait=True)

    # -- opening and reloading (owner thread only) ----------------------------------------

    def _searcher_for(self, collection: Any) -> Searcher:
        try:
            # checks the model's fingerprint and dim (and the query bank's, with hubness correction)
            searcher = Searcher(
                self.model, collection, hubness=self.hubness, rerank=self.rerank, expansion=self.expansion
            )
            searcher.prepare()  # every item's hub penalty, read or computed once: queries look them up
            return searcher
        except BaseException:
            collection.close()
            raise

    def _signature_now(self) -> Any:
        """What changes when another process saves the collection: the commit token of a collection
        that offers one (on a server), else the files of its folder. ``None`` when it cannot be read."""
        token = getattr(getattr(self._searcher, "collection", None), "commit_token", None)
        if token is None:
            return _disk_signature(self.path)
        try:
            return token()
        except Exception as exc:  # e.g. the server is briefly unreachable: keep serving what is open
            logger.warning("cannot tell whether collection %r changed (%s)", self.name, exc)
            return None

    def _open_initial(self) -> None:
        files = _disk_signature(self.path)  # taken before opening: a save meanwhile shows as a change
        self._searcher = self._searcher_for(self._opener(self.location, self._mmap))
        has_token = getattr(self._searcher.collection, "commit_token", None) is not None
        self._signature = self._signature_now() if has_token else files
        self._checked_at = time.monotonic()

    def reopen(self, force: bool) -> bool:
        """Reopen the collection now if it changed (or ``force``); keep the old one on failure.
        Owner thread only: call it through :meth:`run` / :meth:`call`, or use :meth:`reload`."""
        signature = self._signature_now()
        self._checked_at = time.monotonic()
        if not force and (signature is None or signature == self._signature):
            return False
        try:
            fresh = self._searcher_for(self._opener(self.location, self._mmap))
        except Exception as exc:  # a writer may be mid-save or gone wrong: keep serving the old state
            logger.warning(
                "collection %r changed on disk but could not be reopened (%s); retrying later", self.name, exc
            )
            if force:  # the reason (with the collection's place on disk) goes to the log, not the client
                raise bad_request(
                    "reload_failed",
                    f"cannot reopen collection {self.name!r} now (a writer may be saving it); the server "
                    "keeps serving the version it has, and its log says why",
                ) from None
            return False
        self._swap(fresh, signature)
        return True

    def _swap(self, fresh: Searcher, signature: Any) -> None:
        old, self._searcher, self._signature = self._searcher, fresh, signature
        self.reloads += 1
        if old is not None:
            old.collection.close()
        logger.info("collection %r reloaded: %d items", self.name, len(fresh.collection))

    def _reopen_in_background(self, signature: Any) -> None:
        """Open the changed collection in a helper thread (queries keep using the old one meanwhile),
        then swap it in from the owner thread."""

        def work() -> None:
            try:
                fresh = self._searcher_for(self._opener(self.location, self._mmap))
            except Exception as exc:
                logger.warning("collection %r changed on disk but could not be reopened (%s)", self.name, exc)
                self._reloading = False
                return

            def swap() -> None:
                self._reloading = False
                if self._searcher is None:  # closed meanwhile
                    fresh.collection.close()
                else:
                    self._swap(fresh, signature)

            try:
                self._executor.submit(swap)
            except RuntimeError:  # shut down meanwhile
                fresh.collection.close()

        self._reloading = True
        threading.Thread(target=work, name=f"reload-{self.name}", daemon=True).start()

    def _fresh(self) -> Searcher:
        now = time.monotonic()
        if (
            self.reload_interval > 0
            and not self._reloading
            and now - self._checked_at >= self.reload_interval
        ):
            self._checked_at = now
            signature = self._signature_now()
            if signature is not None and signature != self._signature:
                self._reopen_in_background(signature)
        assert self._searcher is not None, "collection used after close()"
        return self._searcher

    def reload(self, force: bool = True) -> bool:
        """Reopen the collection now (synchronous); returns whether it was reopened."""
        return self.call(self.reopen, force)

    # -- encoding (any worker thread) --------------------------------------------------------

    def require_model(self) -> None:
        """Raise the 400 "no model" error unless this collection can encode text and image queries."""
        self._encoder()

    def _encoder(self) -> Searcher:
        searcher = self._searcher
        if searcher is None or self.model is None:
            raise bad_request(
                "no_model",
                f"collection {self.name!r} is served without a model, so it can only be searched by "
                "embedding or item; start the server with --model to search by text or image",
            )
        return searcher

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        searcher = self._encoder()
        try:
            return searcher.encode_texts(list(texts))  # [n, D] unit rows
        except (ValueError, TypeError) as exc:  # the model refused this query (the batcher isolates it)
            raise bad_request("bad_query", f"cannot encode this text query: {_short(exc)}") from None

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        searcher = self._encoder()
        try:
            return searcher.encode_images(list(images))  # [n, D] unit rows
        except (ValueError, TypeError) as exc:
            raise bad_request("bad_query", f"cannot encode this image query: {_short(exc)}") from None

    # -- queries (owner thread only) -------------------------------------------------------

    def scoring(self, query_modality: str | None) -> str:
        """What hit scores mean for queries of ``query_modality`` (:meth:`retrieval.search.Searcher.scoring`).
        Any thread: it depends on settings every reopened searcher shares."""
        searcher = self._searcher
        assert searcher is not None, "collection used after close()"
        return searcher.scoring(query_modality)

    def modality_counts(self) -> dict[str, int] | None:
        """Items per ``modality`` value (None when the collection does not record it or is too large
        to count quickly); counted once per version of the collection."""
        searcher = self._fresh()
        if self._counts[0] != id(searcher):
            self._counts = (id(searcher), _modality_counts(searcher.collection))
        return self._counts[1]

    def info(self) -> dict[str, Any]:
        searcher = self._fresh()
        c = searcher.collection
        return {
            "name": self.name,
            "count": len(c),
            "dim": int(c.dim),
            "metric": str(c.metric),
            "index_spec": str(c.index_spec),
            "fingerprint": c.fingerprint,
            "model_fingerprint": self.model.fingerprint() if self.model else None,
            "fields": sorted(set(c.fields()) - self.hidden_fields),
            "text_fields": self._text_fields(c),
            "text_search": self.model is not None,
            "image_search": self.model is not None,
            "media": self.media_root is not None,
            "reloads": self.reloads,
            "modalities": self.modality_counts(),
            "scoring": {q: searcher.scoring(q) for q in ("text", "image")},
        }

    def fields(self) -> list[str]:
        """The metadata fields clients may see and filter on (hidden fields are left out)."""
        return [f for f in self._fresh().collection.fields() if f not in self.hidden_fields]

    def dim(self) -> int:
        return int(self._fresh().collection.dim)

    def metadata(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Metadata (JSON-safe) of the ids that exist; unknown or removed ids are left out."""
        c = self._fresh().collection
        return {i: json_safe(m) for i, m in _get_existing(c, ids).items()}

    def item_vector(self, item_id: int) -> np.ndarray:
        c = self._fresh().collection
        try:
            return np.asarray(c.vectors([int(item_id)]), dtype=np.float32)  # [1, D]
        except (KeyError, ValueError, IndexError, OverflowError):
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
        query_modality: str | None = None,
    ) -> list[list[Hit]]:
        """Best hits per query row, best first: ``k`` of them, or ``fetch`` when larger (for
        clip-retrieval's ``num_result_ids``; the caller trims what it shows); ``deduplicate`` drops
        near-copies (cosine >= 0.94 to a better hit) from that list. ``query_modality`` ("text" /
        "image") lets the searcher apply hubness correction and re-ranking when configured."""
        searcher = self._fresh()
        c = searcher.collection
        # A hidden field is not filterable either: yes/no answers about it would reveal its values.
        fields = set(c.fields()) - self.hidden_fields
        unknown = sorted(set(where or {}) - fields)
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
        try:
            rows = searcher.search_vectors(
                queries, max(k, fetch or 0), modality=modality, where=where, query_modality=query_modality
            )
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a filter value SQLite cannot hold
            raise bad_request("bad_query", f"search refused: {exc}") from None
        results = []
        for hits in rows:
            if deduplicate and len(hits) > 1:
                keep = _unique_rows(np.asarray(c.vectors([h.id for h in hits]), dtype=np.float32))
                hits = [hits[i] for i in keep]
            results.append([dataclasses.replace(h, metadata=json_safe(h.metadata)) for h in hits])
        return results

    def _text_fields(self, c: Any) -> list[str]:
        """The indexed text fields clients may search (hidden fields are left out: matching their
        words would reveal them)."""
        return [f for f in (getattr(c, "text_fields", None) or []) if f not in self.hidden_fields]

    def check_hybrid(self, hybrid: Hybrid) -> Hybrid:
        """``hybrid`` with its fields checked against what may be searched (400 otherwise)."""
        c = self._fresh().collection
        allowed = self._text_fields(c)
        if not allowed:
            raise bad_request(
                "no_text_index",
                f"collection {self.name!r} has no text index to search words in: declare one "
                "(`retrieval text-index COLLECTION FIELD[,FIELD]`) or search without hybrid",
            )
        unknown = sorted(set(hybrid.fields or ()) - set(allowed))
        if unknown:
            raise bad_request(
                "unknown_text_field",
                f"text field(s) {unknown} are not searchable; this collection has {allowed}",
            )
        if hybrid.fields is None and len(allowed) < len(getattr(c, "text_fields", [])):
            hybrid = dataclasses.replace(hybrid, fields=tuple(allowed))
        return hybrid

    def search_hybrid(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | None,
        k: int,
        where: Mapping[str, Any] | None,
        modality: str | None,
        hybrid: Hybrid,
    ) -> list[list[Hit]]:
        """Hybrid hits of text queries (``vectors``: their embeddings, None for the words alone)."""
        searcher = self._fresh()
        fields = set(searcher.collection.fields()) - self.hidden_fields
        unknown = sorted(set(where or {}) - fields)
        if unknown:
            raise bad_request(
                "unknown_field",
                f"unknown filter field(s) {unknown}; this collection has fields {sorted(fields)}",
            )
        hybrid = self.check_hybrid(hybrid)
        try:
            rows = searcher.search_hybrid(
                list(texts), vectors, k, modality=modality, where=where, hybrid=hybrid
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise bad_request("bad_query", f"search refused: {exc}") from None
        return [[dataclasses.replace(h, metadata=json_safe(h.metadata)) for h in hits] for hits in rows]

    def media(self, item_id: int) -> tuple[Path | bytes, str]:
        """The image file of an item, if it lies inside the media root: ``(path or bytes, media type)``."""
        if self.media_root is None:
            raise not_found(
                "no_media_root",
                f"collection {self.name!r} has no media root, so its images are not served; "
                "start the server with --media-root to declare the folder holding them",
            )
        meta = _get_existing(self._fresh().collection, [item_id]).get(int(item_id))
        if meta is None:
            raise not_found("unknown_item", f"collection {self.name!r} has no item with id {item_id}")
        ref = next((meta[f] for f in IMAGE_FIELDS if isinstance(meta.get(f), str) and meta[f]), None)
        if ref is None:
            raise not_found("no_image", f"item {item_id} of {self.name!r} has no image file")
        return resolve_media(self.media_root, ref)


def _modality_counts(c: Any) -> dict[str, int] | None:
    if "modality" not in set(c.fields()) or len(c) > MODALITY_COUNT_LIMIT:
        return None
    counts: collections.Counter[str] = collections.Counter()
    ids = np.asarray(c.ids(), dtype=np.int64)
    for start in range(0, len(ids), 4096):
        counts.update(str(m.get("modality") or "other") for m in c.get(ids[start : start + 4096]))
    return dict(sorted(counts.items()))


def _short(exc: BaseException) -> str:
    """An exception as one short line for a client."""
    return f"{type(exc).__name__}: {exc}"[:300]


def _get_existing(c: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Metadata of the ids that exist in ``c`` (the collection raises on unknown ids: retry one by one)."""
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    try:
        return dict(zip(ids, c.get(ids), strict=True))
    except (KeyError, ValueError, IndexError, OverflowError):
        found = {}
        for i in ids:
            try:
                found[i] = c.get([i])[0]
            except (KeyError, ValueError, IndexError, OverflowError):
                continue
        return found


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
