"""A content-addressed cache of tower outputs, shared by training, ``embed`` and ``eval``.

A locked tower gives an image the same features every time, so what one run computed another can
read: training stores the features of its train and validation images, and ``embed`` / ``eval``
of the same images then run only the model's heads. An entry's key is

    sha256(namespace || sha256(image bytes)),  namespace = sha256(tower fingerprint, transform, format)

so a changed file (other bytes), another tower (other weights: a fine-tuned tower has its own
fingerprint) or another preprocessing (size, mean, std, resampling) can never read a stale entry;
the same bytes under two paths share one entry. Only images given by reference (paths,
``tar://`` members) are cached; in-memory PIL images are encoded every time. Text tower outputs
are kept the same way, keyed by the text's UTF-8 bytes under ``namespace(text tower fingerprint,
{"kind": "text"})`` (the fingerprint covers the tokenizer: :mod:`retrieval.encoding.texts`).

Training that adapts the last parts of a pretrained tower also stores the rows of its locked
prefix (:mod:`retrieval.train.prefix`, under the prefix's own fingerprint); encoding with the
adapted model reads them (never adds them: a prefix row is several times a feature's size), so
the images training saw run only the trained suffix.

Storage is one SQLite database (``features.sqlite3`` in ``$RETRIEVAL_CACHE/features``, WAL
journal): several processes may read and write it at once (SQLite's own locking; writers wait up
to :data:`BUSY_TIMEOUT` seconds), and a crash mid-write leaves the last committed state. Its size is
bounded: after each write, when the stored features exceed ``max_bytes``
(:data:`retrieval.config.FEATURE_CACHE_MB`, or ``$RETRIEVAL_FEATURE_CACHE_MB``), the least
recently used entries are deleted until 90 % of the cap is left. A cache that cannot be opened
(unwritable folder, damaged file) is logged once and ignored: features are then computed as if
it were off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import FEATURE_CACHE_MB

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # part of every namespace: a new layout never reads old entries
DB_FILE = "features.sqlite3"
BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction
EVICT_TO = 0.9  # eviction keeps this share of the cap, so the next writes do not evict at once
SIZE_ENV = "RETRIEVAL_FEATURE_CACHE_MB"


def default_max_bytes() -> int:
    """The cap: ``$RETRIEVAL_FEATURE_CACHE_MB`` megabytes when set, else :data:`FEATURE_CACHE_MB`."""
    raw = os.environ.get(SIZE_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"${SIZE_ENV} must be a number of megabytes, received {raw!r}: e.g. {SIZE_ENV}=4096"
            ) from None
        return int(value * 1024 * 1024)
    return FEATURE_CACHE_MB * 1024 * 1024


def content_hash(data: bytes) -> bytes:
    """The digest an image's bytes are known by."""
    return hashlib.sha256(data).digest()


def namespace(tower_fingerprint: str, transform: Any) -> bytes:
    """What, besides the bytes, decides a feature: the tower and its preprocessing."""
    text = json.dumps(
        {"format": CACHE_FORMAT, "tower": tower_fingerprint, "transform": transform},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).digest()


def entry_key(space: bytes, digest: bytes) -> bytes:
    """The key of an image (``digest``: :func:`content_hash` of its bytes) under ``space``."""
    return hashlib.sha256(space + digest).digest()


class FeatureCache:
    """Tower features by content key; safe to share between threads and processes (and picklable:
    DataLoader workers and Ray actors open their own connections)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_bytes: int | None = None) -> None:
        if folder is None:
            from retrieval.paths import cache_dir

            folder = cache_dir("features")
        self.folder = Path(folder)
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: store nothing), received {max_bytes!r}")
        self._local = threading.local()
        self._broken: str | None = None
        self.hits = 0  # images whose features the encoders read from this object (this process)
        self.misses = 0  # images they looked up and computed

    @property
    def path(self) -> Path:
        return self.folder / DB_FILE

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["max_bytes"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.folder)!r}, max_bytes={self.max_bytes})"

    # ------------------------------------------------------------------ connection
    def _connection(self) -> sqlite3.Connection | None:
        """This thread's connection (a new one after a fork), or None when the cache is unusable."""
        if self._broken is not None:
            return None
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (key BLOB PRIMARY KEY, dim INTEGER NOT NULL, "
                "value BLOB NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL) WITHOUT ROWID"
            )
            # sizes beside the use times: the cap check after every write (SUM of sizes) and the
            # eviction order read this small index, never the feature rows themselves (with the
            # values stored before it, reading a row's size means reading through its value)
            conn.execute("CREATE INDEX IF NOT EXISTS features_used_size ON features (used, size)")
            conn.execute("DROP INDEX IF EXISTS features_used")  # what caches written before held
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)
            return None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _disable(self, exc: BaseException) -> None:
        self._broken = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "the feature cache %s is not used (%s): features are computed", self.path, self._broken
        )

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ reads and writes
    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """``key -> features [F] float32`` for the keys stored; their use time is refreshed."""
        conn = self._connection()
        if conn is None or not keys:
            return {}
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, dim, value FROM features WHERE key IN ({marks})", chunk)
                for key, dim, value in rows:
                    array = np.frombuffer(value, dtype=np.float32)
                    if array.size == dim:  # a damaged row is a miss
                        found[bytes(key)] = array
            stamp = time.time()
            hit_keys = list(found)
            for start in range(0, len(hit_keys), 500):
                chunk = hit_keys[start : start + 500]
                conn.execute(
                    f"UPDATE features SET used = ? WHERE key IN ({','.join('?' * len(chunk))})",
                    [stamp, *chunk],
                )
        except sqlite3.Error as exc:
            self._disable(exc)
            return {}
        return found

    def get(self, key: bytes) -> np.ndarray | None:
        return self.get_many([key]).get(key)

    def put_many(self, entries: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store ``(key, features [F])`` pairs (float32), then evict down to the cap when above it."""
        rows = []
        stamp = time.time()
        for key, features in entries:
            array = np.ascontiguousarray(np.asarray(features, dtype=np.float32).reshape(-1))
            rows.append((key, int(array.size), array.tobytes(), int(array.nbytes), stamp))
        conn = self._connection()
        if conn is None or not rows or self.max_bytes == 0:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO features (key, dim, value, size, used) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._evict(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._disable(exc)

    def _evict(self, conn: sqlite3.Connection) -> None:
        total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM features").fetchone()[0]
        if total <= self.max_bytes:
            return
        target = int(self.max_bytes * EVICT_TO)
        doomed: list[bytes] = []
        for key, size in conn.execute("SELECT key, size FROM features ORDER BY used"):
            if total <= target:
                break
            doomed.append(key)
            total -= size
        for start in range(0, len(doomed), 500):
            chunk = doomed[start : start + 500]
            conn.execute(f"DELETE FROM features WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        logger.info("feature cache: evicted %d least recently used entries", len(doomed))

    def stats(self) -> tuple[int, int]:
        """``(entries, bytes of features)`` stored now."""
        conn = self._connection()
        if conn is None:
            return 0, 0
        count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM features").fetchone()
        return int(count), int(size)

    def clear(self) -> None:
        """Delete every entry."""
        conn = self._connection()
        if conn is not None:
            conn.execute("DELETE FROM features")
