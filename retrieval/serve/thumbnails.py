"""Thumbnails of item images for result grids: made once, away from query encoding, and kept.

A thumbnail is keyed by what it was made from (the file's real path, size and modification time,
or the digest of a tar member's bytes) and the requested side, so a changed file gets a new one.
Thumbnails are made in their own small thread pool (at a lower CPU priority where the system
allows), never in the pool that encodes queries, so a grid of large photos cannot slow searches down; they are kept in a least-recently-used cache bounded
in bytes. Concurrent requests for one thumbnail wait for one decode, and when ``max_pending``
thumbnails are already being made, a request for another raises :class:`ThumbnailsBusy` rather
than queue without bound (the service then sends the original file, which costs no decoding).

JPEG originals are decoded at a reduced scale when the thumbnail is much smaller than they are
(:func:`retrieval.data.load_image`'s ``reduce_to``): a 36-megapixel photo costs a fraction of a full
decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["ThumbnailCache", "ThumbnailsBusy", "make_thumbnail"]

_NONE_COST = 64  # bytes charged for remembering that a file is served as it is


class ThumbnailsBusy(Exception):
    """``max_pending`` thumbnails are being made already: serve the original, or try later."""


def make_thumbnail(content: Path | bytes, max_side: int, max_pixels: int) -> bytes | None:
    """A JPEG no larger than ``max_side`` of an image, or ``None`` to serve the file as it is
    (already small, or a format the decoder refuses, such as SVG)."""
    from retrieval.data import images

    try:
        image = images.load_image(
            content if isinstance(content, bytes) else str(content), max_pixels=max_pixels, reduce_to=max_side
        )
    except images.ImageDecodeError:
        return None
    if max(image.size) <= max_side:
        return None
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _lower_priority() -> None:
    """Let query threads have the CPU first: a thumbnail thread runs at a lower priority where the
    system allows one thread's priority to be set (Linux; a no-op elsewhere)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _source_key(content: Path | bytes) -> tuple[Any, ...]:
    if isinstance(content, bytes):
        return ("bytes", hashlib.blake2b(content, digest_size=16).hexdigest())
    stat = os.stat(content)
    return ("file", str(content), stat.st_size, stat.st_mtime_ns)


class ThumbnailCache:
    """Thumbnails made in ``workers`` threads of their own and kept within ``max_bytes`` (module docstring)."""

    def __init__(self, *, max_bytes: int, workers: int, max_pixels: int, max_pending: int = 32) -> None:
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.max_pending = max(1, int(max_pending))
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, int(workers)),
            thread_name_prefix="serve-thumbnails",
            initializer=_lower_priority,
        )
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], bytes | None] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[Any, ...], Future[bytes | None]] = {}
        self.made = 0  # thumbnails made (decodes) so far

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def get(self, content: Path | bytes, max_side: int) -> bytes | None:
        """The thumbnail of ``content`` (``None``: serve the original); see the module docstring."""
        try:
            source = _source_key(content)  # a stat, or a digest of a tar member's bytes (~1 GB/s)
        except OSError:
            return None  # gone meanwhile: the caller serves (or fails on) the file itself
        key = (*source, int(max_side))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            future = self._pending.get(key)
            if future is None:
                if len(self._pending) >= self.max_pending:
                    raise ThumbnailsBusy(f"{len(self._pending)} thumbnails are being made")
                future = self._pool.submit(self._make, key, content, int(max_side))
                self._pending[key] = future
        return await asyncio.wrap_future(future)

    def _make(self, key: tuple[Any, ...], content: Path | bytes, max_side: int) -> bytes | None:
        try:
            thumb = make_thumbnail(content, max_side, self.max_pixels)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        with self._lock:
            self.made += 1
            self._store(key, thumb)
        return thumb

    def _store(self, key: tuple[Any, ...], thumb: bytes | None) -> None:
        cost = len(thumb) if thumb is not None else _NONE_COST
        if cost > self.max_bytes:
            return
        if key in self._cache:
            old = self._cache.pop(key)
            self._bytes -= len(old) if old is not None else _NONE_COST
        self._cache[key] = thumb
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= len(old) if old is not None else _NONE_COST

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
