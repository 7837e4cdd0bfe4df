"""Lexicons: the postings of one segment's text fields (a file), or of the unsaved buffer (memory).

A segment's lexicon is a SQLite file written once beside its metadata, named with the generation
that wrote it (``lexical-000012-3fa2c1d0.sqlite``) and recorded, with its checksum, in the
segment's manifest entry (``"lexical"``), like its index and its deletion record::

    meta      (key, value)               format version, the text index declaration, rows
    lengths   (field, tokens, lens)      tokens per row of each field: int32 [rows] little-endian
    postings  (field, term, chunk,       the rows (int32, ascending) holding ``term`` in ``field``
               rows, tfs)                and how often (uint16, saturated at 65535), per chunk of
                                         ``Limits.lexicon_chunk_rows`` rows

Rows are positions in the segment (its ids are ascending), so deletion records and ``where``
filters apply to postings as they do to vectors. Terms are what FTS5's tokenizer makes of the
metadata text (:mod:`indexes.lexical.tokens`); a lexicon is derived data, rebuilt from the
segment's metadata by a repair or when the text fields change. It is built chunk by chunk, so
building costs memory in proportion to a chunk, not to the segment.

:class:`BufferLexicon` holds the same postings for the buffer of unsaved items, in memory; it
catches up with rows added since it last looked (rows are only ever appended to a buffer).
"""

from __future__ import annotations

import abc
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes import files
from indexes.lexical.config import FORMAT_VERSION, TextIndex, field_text
from indexes.lexical.tokens import term_counts

__all__ = [
    "BufferLexicon",
    "Lexicon",
    "SegmentLexicon",
    "compare_lexicon",
    "lexicon_entries",
    "write_lexicon",
    "write_lexicon_record",
]

TF_MAX = 65535  # term frequencies are stored as uint16

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE lengths (field INTEGER PRIMARY KEY, tokens INTEGER NOT NULL, lens BLOB NOT NULL);
CREATE TABLE postings (
    field INTEGER NOT NULL, term TEXT NOT NULL, chunk INTEGER NOT NULL, rows BLOB NOT NULL, tfs BLOB NOT NULL,
    PRIMARY KEY (field, term, chunk)
) WITHOUT ROWID;
"""


class Lexicon(abc.ABC):
    """What BM25 scoring reads from a part's postings (a segment file or the buffer)."""

    config: TextIndex
    rows: int

    @abc.abstractmethod
    def postings(self, field: int, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 [m] ascending, term frequencies int64 [m]) of ``term`` in field position ``field``."""

    @abc.abstractmethod
    def lengths(self, field: int) -> np.ndarray:
        """int64 [rows]: tokens of each row in field position ``field``."""

    def close(self) -> None:  # a part that holds files closes them; the buffer holds none
        return None


# ---------------------------------------------------------------------------------------------- building
def _texts(data: Sequence[dict[str, Any]], config: TextIndex) -> list[list[str]]:
    """Column-wise texts of the indexed fields: [field][row]."""
    return [[field_text(meta.get(name)) for meta in data] for name in config.fields]


def _read_chunks(meta_path: Path, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """The metadata dicts of a segment's database in id (= row) order, ``chunk_rows`` at a time."""
    con = sqlite3.connect(f"file:{Path(meta_path).resolve()}?mode=ro&immutable=1", uri=True)
    try:
        cur = con.execute("SELECT data FROM items ORDER BY id")
        while True:
            batch = cur.fetchmany(chunk_rows)
            if not batch:
                return
            yield [json.loads(text) for (text,) in batch]
    finally:
        con.close()


def lexicon_entries(chunks: Iterator[list[dict[str, Any]]], config: TextIndex) -> Iterator[tuple[str, Any]]:
    """The content of a lexicon built from metadata chunks, in file order: ``("posting", (field, term,
    chunk, rows, tfs))`` per chunk and term, then ``("lengths", [int64 [rows] per field])``."""
    lengths: list[list[np.ndarray]] = [[] for _ in config.fields]
    first = 0
    for chunk, data in enumerate(chunks):
        counts = term_counts(_texts(data, config), config.tokenizer)
        for col, term, lo, hi in counts.groups():
            rows = counts.docs[lo:hi] + first
            tfs = np.minimum(counts.counts[lo:hi], TF_MAX)
            yield "posting", (col, term, chunk, rows, tfs)
        for f in range(len(config.fields)):
            lengths[f].append(counts.lengths[f])
        first += len(data)
    yield "lengths", [np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for parts in lengths]


def write_lexicon(
    path: Path, meta_path: Path, config: TextIndex, rows: int, chunk_rows: int
) -> dict[str, Any]:
    """Write the lexicon of the segment whose metadata database is ``meta_path`` to the new file ``path``;
    returns {"tokens": [per field], "digest": ...} (the file is fsynced and checksummed)."""
    if path.exists():
        raise FileExistsError(f"{path} exists; lexicon files are never rewritten")
    con = sqlite3.connect(str(path))
    tokens: list[int] = []
    try:
        con.execute("PRAGMA journal_mode=OFF")  # a new file, fsynced and checksummed below
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(_SCHEMA)
        seen = 0
        with con:
            for kind, value in lexicon_entries(_read_chunks(meta_path, chunk_rows), config):
                if kind == "posting":
                    field, term, chunk, r, tfs = value
                    con.execute(
                        "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                        (field, term, chunk, r.astype("<i4").tobytes(), tfs.astype("<u2").tobytes()),
                    )
                else:
                    for field, lens in enumerate(value):
                        seen = int(lens.shape[0])
                        tokens.append(int(lens.sum()))
                        con.execute(
                            "INSERT INTO lengths VALUES (?, ?, ?)",
                            (field, tokens[-1], np.minimum(lens, 2**31 - 1).astype("<i4").tobytes()),
                        )
            if seen != rows:
                raise ValueError(f"{meta_path} holds {seen} items, the segment has {rows} rows")
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("format_version", str(FORMAT_VERSION)),
                    ("config", json.dumps(config.as_dict(), sort_keys=True)),
                    ("rows", str(rows)),
                    ("chunk_rows", str(chunk_rows)),
                ],
            )
    finally:
        con.close()
    files.fsync_file(path)
    return {"tokens": tokens, "digest": files.digest_file(path)}


def write_lexicon_record(
    folder: Path, config: TextIndex, generation: int, rows: int, chunk_rows: int
) -> dict[str, Any]:
    """Write a segment's lexicon under generation ``generation``; returns the entry's ``lexical`` record."""
    file = f"lexical-{generation:06d}-{secrets.token_hex(4)}.sqlite"
    try:
        written = write_lexicon(folder / file, folder / "metadata.sqlite", config, rows, chunk_rows)
    except BaseException:
        (folder / file).unlink(missing_ok=True)
        raise
    return {
        "file": file,
        "config": config.as_dict(),
        "tokens": written["tokens"],
        "chunk_rows": int(chunk_rows),
        "digest": written["digest"],
    }


# ---------------------------------------------------------------------------------------------- reading
class SegmentLexicon(Lexicon):
    """A segment's lexicon file, opened read-only (immutable)."""

    def __init__(self, path: Path, config: TextIndex, rows: int) -> None:
        self.path = path
        self.config = config
        self.rows = rows
        self._con = sqlite3.connect(
            f"file:{path.resolve()}?mode=ro&immutable=1", uri=True, check_same_thread=False
        )
        self._lengths: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, folder: Path, record: dict[str, Any], rows: int) -> SegmentLexicon:
        return cls(folder / record["file"], TextIndex.from_dict(record["config"]), rows)

    def postings(self, field: int, term: str) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            found = self._con.execute(
                "SELECT rows, tfs FROM postings WHERE field = ? AND term = ? ORDER BY chunk", (field, term)
            ).fetchall()
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.concatenate([np.frombuffer(r, dtype="<i4") for r, _ in found]).astype(np.int64)
        tfs = np.concatenate([np.frombuffer(t, dtype="<u2") for _, t in found]).astype(np.int64)
        return rows, tfs

    def lengths(self, field: int) -> np.ndarray:
        cached = self._lengths.get(field)
        if cached is None:
            with self._lock:
                row = self._con.execute("SELECT lens FROM lengths WHERE field = ?", (field,)).fetchone()
            cached = (
                np.frombuffer(row[0], dtype="<i4").astype(np.int64) if row else np.zeros(self.rows, np.int64)
            )
            self._lengths[field] = cached
        return cached

    def close(self) -> None:
        self._con.close()


def compare_lexicon(path: Path, meta_path: Path, config: TextIndex, rows: int) -> str | None:
    """What is wrong with the lexicon file ``path`` against the segment's metadata (None: it holds exactly
    what a lexicon built from it now holds)."""
    con = sqlite3.connect(f"file:{path.resolve()}?mode=ro&immutable=1", uri=True)
    try:
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if int(meta.get("rows", -1)) != rows:
                return f"it describes {meta.get('rows')} rows, the segment has {rows}"
            stored = TextIndex.from_dict(json.loads(meta["config"]))
            if stored != config:
                return f"it indexes {stored.as_dict()}, the collection declares {config.as_dict()}"
            chunk_rows = int(meta["chunk_rows"])
            if chunk_rows < 1:
                return f"it records {chunk_rows} rows per chunk"
            cur = con.execute(
                "SELECT field, term, chunk, rows, tfs FROM postings ORDER BY field, term, chunk"
            )
            expected = lexicon_entries(_read_chunks(meta_path, chunk_rows), config)
            by_key = {}
            for kind, value in expected:
                if kind == "posting":
                    field, term, chunk, r, tfs = value
                    by_key[(field, term, chunk)] = (r.astype("<i4").tobytes(), tfs.astype("<u2").tobytes())
                else:
                    for field, lens in enumerate(value):
                        got = con.execute("SELECT lens FROM lengths WHERE field = ?", (field,)).fetchone()
                        if got is None or got[0] != np.minimum(lens, 2**31 - 1).astype("<i4").tobytes():
                            return (
                                f"its token counts of field {config.fields[field]!r} differ from the metadata"
                            )
            n = 0
            for field, term, chunk, r, tfs in cur:
                n += 1
                want = by_key.get((field, term, chunk))
                if want is None or want != (bytes(r), bytes(tfs)):
                    return (
                        f"its postings of {term!r} in field {config.fields[field]!r} differ from the metadata"
                    )
            if n != len(by_key):
                return f"it holds {n} postings lists, the metadata gives {len(by_key)}"
        except (sqlite3.DatabaseError, KeyError, ValueError) as exc:
            return f"it cannot be read as a lexicon ({exc})"
        return None
    finally:
        con.close()


class BufferLexicon(Lexicon):
    """Postings of the unsaved buffer's rows, in memory; :meth:`catch_up` reads rows added since."""

    def __init__(self, config: TextIndex, chunk_rows: int) -> None:
        self.config = config
        self.rows = 0
        self._chunk_rows = max(1, int(chunk_rows))
        self._postings: dict[tuple[int, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._lengths: list[list[np.ndarray]] = [[] for _ in config.fields]
        self._joined: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()

    def catch_up(self, ids: np.ndarray, read: Any) -> None:
        """Read rows ``self.rows ..`` of a buffer whose ids are ``ids`` (``read(ids)`` -> metadata dicts)."""
        total = int(ids.shape[0])
        while self.rows < total:
            hi = min(total, self.rows + self._chunk_rows)
            data = read(ids[self.rows : hi])
            counts = term_counts(_texts(data, self.config), self.config.tokenizer)
            for col, term, lo, up in counts.groups():
                rows = counts.docs[lo:up] + self.rows
                self._postings.setdefault((col, term), []).append(
                    (rows, np.minimum(counts.counts[lo:up], TF_MAX))
                )
            for f in range(len(self.config.fields)):
                self._lengths[f].append(counts.lengths[f])
            self._joined.clear()
            self.rows = hi

    def postings(self, field: int, term: str) -> tuple[np.ndarray, np.ndarray]:
        found = self._postings.get((field, term))
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if len(found) > 1:
            found[:] = [(np.concatenate([r for r, _ in found]), np.concatenate([t for _, t in found]))]
        return found[0]

    def lengths(self, field: int) -> np.ndarray:
        joined = self._joined.get(field)
        if joined is None:
            parts = self._lengths[field]
            joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            self._joined[field] = joined
        return joined
