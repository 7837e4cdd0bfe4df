"""SQLite metadata store: one JSON object of fields per item id, and ``where`` filters compiled to SQL.

Each item is a row ``(id INTEGER PRIMARY KEY, data TEXT)`` where ``data`` is the item's
fields as a JSON object; a second table counts how many items carry each field, so a
filter on a field no item has is rejected by name instead of silently matching nothing.

Filters (``where``) are dicts; several keys combine with AND::

    {"modality": "image"}                       # equality
    {"lang": ["en", "fr"]}                      # membership ("in")
    {"year": {"gte": 2000, "lt": 2010}}         # ranges: gt, gte, lt, lte
    {"lang": {"in": ["en"]}, "tag": {"ne": "x"}} # explicit operators: eq, ne, in, gt, gte, lt, lte

``ne`` matches items that carry the field with another value (items without the field do
not match); ``{"field": None}`` matches items where the field is null or missing.

Values are always bound as SQL parameters (never pasted into the SQL text), and field
names travel as bound JSON paths too. Range bounds must be numbers or strings; a numeric
range only matches numeric values and a string range only strings, so ``{"gte": 3}`` never
matches the text ``"abc"`` through SQLite's cross-type ordering.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FILTER_OPERATORS",
    "MetadataStore",
    "compile_where",
    "counts_of",
    "create_file",
    "merge_files",
    "validate_metadata",
]

# operator name -> SQL comparison applied to json_extract(data, path)
FILTER_OPERATORS: dict[str, str] = {
    "eq": "=",
    "ne": "!=",
    "in": "IN",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
}
_RANGE_OPS = ("gt", "gte", "lt", "lte")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def _json_path(field: str) -> str:
    """The JSON path of a top-level field, as SQLite matches it against the stored JSON text.

    SQLite compares a quoted path label with the key as it is written in the JSON text (3.40) or
    with both decoded (later versions); the key written the way the stored text writes it (JSON
    escapes for backslashes and control characters, other characters as they are) matches in
    both. Field names never contain '"' (validate_metadata refuses them), so the quoting is safe.
    """
    return '$."' + json.dumps(field, ensure_ascii=False)[1:-1] + '"'


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays become their Python equivalents; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def validate_metadata(
    metadata: Sequence[dict[str, Any] | None] | None, n: int, counts: dict[str, int] | None = None
) -> list[str]:
    """Check ``metadata`` (one dict per vector, or ``None``) and return one JSON text per item.

    Raises ``ValueError`` naming the first bad item. The caller's dicts are not modified.
    ``counts``, when given, receives how many items carry each field (for :meth:`MetadataStore.insert`).
    """
    if metadata is None:
        return ["{}"] * n
    if isinstance(metadata, dict) or not isinstance(metadata, Sequence) or isinstance(metadata, str):
        raise ValueError(
            f"metadata must be a list with one dict per vector, received {type(metadata).__name__}: "
            "wrap a single dict in a list"
        )
    if len(metadata) != n:
        raise ValueError(
            f"metadata has {len(metadata)} entries but {n} vectors were given: pass exactly one dict "
            "(or None) per vector"
        )
    texts: list[str] = []
    for i, item in enumerate(metadata):
        if item is None:
            texts.append("{}")
            continue
        if not isinstance(item, dict):
            raise ValueError(f"metadata[{i}] must be a dict, received {type(item).__name__}")
        for key in item:
            if not isinstance(key, str) or not key or '"' in key:
                raise ValueError(
                    f"metadata[{i}] has field name {key!r}: field names must be non-empty strings "
                    'without double quotes (")'
                )
            if counts is not None:
                counts[key] = counts.get(key, 0) + 1
        try:
            texts.append(
                json.dumps(
                    item, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=_json_default
                )
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"metadata[{i}] is not JSON-serialisable ({exc}): use str/int/float/bool/None, lists and dicts "
                "(numpy scalars and arrays are converted); NaN and infinity are not allowed"
            ) from exc
    return texts


def _check_scalar(field: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter on {field!r}: {what} {value!r} is not finite; use a finite number")
        return
    if isinstance(value, np.generic):
        return
    raise ValueError(
        f"filter on {field!r}: {what} must be a str, number, bool or None, received {type(value).__name__}"
    )


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars; bools -> ints (JSON true/false read back as 1/0 in SQLite)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    return value


class MetadataStore:
    """id -> fields, backed by one SQLite connection (a file, or ``":memory:"``).

    Parameters
    ----------
    connection:
        An open ``sqlite3.Connection``; the store owns it and closes it in :meth:`close`.
    read_only:
        Refuse writes (the connection should then be opened read-only as well).
    """

    def __init__(self, connection: sqlite3.Connection, read_only: bool = False) -> None:
        self._con = connection
        self.read_only = read_only
        if not read_only:
            self._con.executescript(_SCHEMA)
        self._fields: dict[str, int] = dict(self._con.execute("SELECT name, n FROM fields").fetchall())

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def in_memory(cls) -> MetadataStore:
        return cls(sqlite3.connect(":memory:", check_same_thread=False))

    @classmethod
    def load_copy(cls, path: Path) -> MetadataStore:
        """A writable in-memory copy of the database file at ``path`` (the file is left untouched)."""
        src = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(":memory:", check_same_thread=False)
            src.backup(dst)
        finally:
            src.close()
        return cls(dst)

    @classmethod
    def open_read_only(cls, path: Path) -> MetadataStore:
        """Open the committed (never again modified) file at ``path`` read-only."""
        uri = f"file:{Path(path).resolve()}?mode=ro&immutable=1"
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return cls(con, read_only=True)

    def write_to(self, path: Path) -> None:
        """Copy the whole database to a new file ``path`` (the caller fsyncs and checksums it)."""
        if Path(path).exists():
            raise FileExistsError(f"{path} exists; segment files are never rewritten")
        dst = sqlite3.connect(str(path))
        try:
            dst.execute("PRAGMA journal_mode=OFF")  # a new file, fsynced and checksummed by the caller
            dst.execute("PRAGMA synchronous=OFF")
            self._con.backup(dst)
            dst.commit()
        finally:
            dst.close()

    def close(self) -> None:
        self._con.close()

    # ----- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._con.execute("SELECT count(*) FROM items").fetchone()[0])

    def fields(self) -> list[str]:
        """Names of the fields at least one item carries, sorted."""
        return sorted(name for name, n in self._fields.items() if n > 0)

    def _writable(self) -> None:
        if self.read_only:
            raise ValueError("this metadata store is read-only: open the collection with read_only=False")

    def insert(self, ids: np.ndarray, texts: Sequence[str], counts: dict[str, int] | None = None) -> None:
        """Store ``texts[i]`` (a JSON object, see :func:`validate_metadata`) under ``ids[i]``.

        ``counts`` (field -> items carrying it) as filled by :func:`validate_metadata`; computed when None.
        """
        self._writable()
        if counts is None:
            counts = {}
            for text in texts:
                if text != "{}":
                    for key in json.loads(text):
                        counts[key] = counts.get(key, 0) + 1
        with self._con:
            self._con.executemany(
                "INSERT INTO items (id, data) VALUES (?, ?)", zip((int(i) for i in ids), texts)
            )
            self._bump(counts, +1)

    def delete(self, ids: np.ndarray) -> None:
        self._writable()
        counts: dict[str, int] = {}
        for data in self._rows(ids).values():
            for key in data:
                counts[key] = counts.get(key, 0) + 1
        with self._con:
            self._con.execute(
                "DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),),
            )
            self._bump(counts, -1)

    def _bump(self, counts: dict[str, int], sign: int) -> None:
        for key, n in counts.items():
            self._fields[key] = self._fields.get(key, 0) + sign * n
            self._con.execute(
                "INSERT INTO fields (name, n) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET n = excluded.n",
                (key, self._fields[key]),
            )

    def _rows(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        id_list = [int(i) for i in ids]
        for start in range(0, len(id_list), 100_000):
            chunk = json.dumps(id_list[start : start + 100_000])
            cur = self._con.execute(
                "SELECT id, data FROM items WHERE id IN (SELECT value FROM json_each(?))", (chunk,)
            )
            out.update((int(i), json.loads(data)) for i, data in cur)
        return out

    def counts_for(self, ids: Iterable[int]) -> dict[str, int]:
        """Field -> how many of ``ids`` carry it (for the deletion record of a segment)."""
        counts: dict[str, int] = {}
        for data in self._rows(ids).values():
            for key in data:
                counts[key] = counts.get(key, 0) + 1
        return counts

    def get(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Fields of each id, in the order given; the caller has already checked the ids exist."""
        id_list = [int(i) for i in ids]
        rows = self._rows(id_list)
        missing = [i for i in id_list if i not in rows]
        assert not missing, f"metadata missing for ids {missing[:5]}"
        return [rows[i] for i in id_list]

    # ----- filters ------------------------------------------------------------------------
    def compile(self, where: dict[str, Any]) -> tuple[str, list[Any]]:
        """``where`` -> (SQL condition, parameters); raises ``ValueError`` on anything malformed."""
        return compile_where(where, self.fields())

    def field_counts(self) -> dict[str, int]:
        """How many items carry each field."""
        return {name: n for name, n in self._fields.items() if n > 0}

    def matching_ids(self, where: dict[str, Any]) -> np.ndarray:
        """Sorted int64 ids of the items matching ``where``."""
        return self.matching(*self.compile(where))

    def matching(self, condition: str, params: Sequence[Any]) -> np.ndarray:
        """Sorted int64 ids of the items matching a condition compiled by :func:`compile_where`."""
        cur = self._con.execute(f"SELECT id FROM items WHERE {condition} ORDER BY id", list(params))
        return np.fromiter((row[0] for row in cur), dtype=np.int64)

    def distinct(self, field: str, limit: int = 16) -> list[Any]:
        """Up to ``limit`` distinct values of ``field`` (scalars only)."""
        cur = self._con.execute(
            "SELECT DISTINCT json_extract(data, ?) FROM items WHERE json_type(data, ?) IN ('text', 'integer') LIMIT ?",
            (_json_path(field), _json_path(field), int(limit)),
        )
        return [row[0] for row in cur]

    def all_ids(self) -> np.ndarray:
        """Every stored id, ascending (used to verify a segment)."""
        cur = self._con.execute("SELECT id FROM items ORDER BY id")
        return np.fromiter((row[0] for row in cur), dtype=np.int64)

    def integrity_problem(self) -> str | None:
        """SQLite's own consistency check: None when the database is sound, else its first complaint."""
        try:
            rows = self._con.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if rows == [("ok",)] else str(rows[0][0])


def compile_where(where: dict[str, Any], known: Sequence[str]) -> tuple[str, list[Any]]:
    """``where`` -> (SQL condition over ``items.data``, parameters), checking fields against ``known``.

    Raises ``ValueError`` naming the problem for anything malformed or any unknown field.
    """
    if not isinstance(where, dict):
        raise ValueError(f"where must be a dict like {{'field': value}}, received {type(where).__name__}")
    if not where:
        raise ValueError("where is an empty dict: pass None to search without a filter")
    known = sorted(known)
    clauses: list[str] = []
    params: list[Any] = []
    for field, cond in where.items():
        if not isinstance(field, str) or field not in known:
            shown = known if len(known) <= 50 else [*known[:50], "..."]
            raise ValueError(
                f"unknown filter field {field!r}; fields present in this collection: {shown}: "
                "check the spelling, or add items carrying that field first"
            )
        path = _json_path(field)
        if isinstance(cond, dict):
            if not cond:
                raise ValueError(f"filter on {field!r} has an empty operator dict; use e.g. {{'gte': 1}}")
            ops = list(cond.items())
        elif isinstance(cond, (list, tuple, set, frozenset)):
            ops = [("in", list(cond))]
        else:
            ops = [("eq", cond)]
        for op, value in ops:
            if op not in FILTER_OPERATORS:
                raise ValueError(
                    f"filter on {field!r}: unknown operator {op!r}; expected one of {sorted(FILTER_OPERATORS)}"
                )
            clause, clause_params = _clause(field, path, op, value)
            clauses.append(clause)
            params.extend(clause_params)
    return " AND ".join(clauses), params


def _clause(field: str, path: str, op: str, value: Any) -> tuple[str, list[Any]]:
    expr = "json_extract(data, ?)"
    if op == "in":
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(
                f"filter on {field!r}: 'in' needs a list of values, received {type(value).__name__}"
            )
        values = list(value)
        if not values:
            return "0", []  # membership in an empty list matches nothing
        for v in values:
            _check_scalar(field, v, "each 'in' value")
        non_null = [_plain(v) for v in values if v is not None]
        parts = []
        params: list[Any] = []
        if non_null:
            # one JSON parameter, however long the list (SQLite limits the number of variables)
            parts.append(f"{expr} IN (SELECT value FROM json_each(?))")
            params.extend([path, json.dumps(non_null, ensure_ascii=False)])
        if len(non_null) < len(values):
            parts.append(f"{expr} IS NULL")
            params.append(path)
        return "(" + " OR ".join(parts) + ")", params
    _check_scalar(field, value, f"the {op!r} value")
    if op in ("eq", "ne") and value is None:
        return f"{expr} IS {'NOT ' if op == 'ne' else ''}NULL", [path]
    if op in _RANGE_OPS:
        if value is None or isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"filter on {field!r}: range operator {op!r} needs a number or a string, received {value!r}"
            )
        kinds = "('text')" if isinstance(value, str) else "('integer', 'real')"
        return (
            f"(json_type(data, ?) IN {kinds} AND {expr} {FILTER_OPERATORS[op]} ?)",
            [path, path, _plain(value)],
        )
    return f"{expr} {FILTER_OPERATORS[op]} ?", [path, _plain(value)]


def create_file(path: Path, ids: np.ndarray, texts: Sequence[str]) -> dict[str, int]:
    """Write a new metadata database ``path`` holding ``texts[i]`` under ``ids[i]``; returns the field counts.

    The caller fsyncs and checksums the file.
    """
    con = _new_database(path)
    try:
        counts: dict[str, int] = {}
        for text in texts:
            if text != "{}":
                for key in json.loads(text):
                    counts[key] = counts.get(key, 0) + 1
        with con:
            con.executemany("INSERT INTO items (id, data) VALUES (?, ?)", zip((int(i) for i in ids), texts))
            con.executemany("INSERT INTO fields (name, n) VALUES (?, ?)", sorted(counts.items()))
        return counts
    finally:
        con.close()


def merge_files(path: Path, sources: Sequence[tuple[Path, np.ndarray]]) -> dict[str, int]:
    """Write a new database ``path`` with, from each source database, the items whose ids are listed.

    ``sources`` are (database path, ids to copy) in id order. Returns the field counts.
    """
    con = _new_database(path)
    try:
        con.execute("CREATE TEMP TABLE keep (id INTEGER PRIMARY KEY)")
        for i, (src, ids) in enumerate(sources):
            con.execute(f"ATTACH DATABASE ? AS src{i}", (f"file:{Path(src).resolve()}?mode=ro&immutable=1",))
            with con:
                con.execute("DELETE FROM keep")
                con.executemany("INSERT INTO keep (id) VALUES (?)", ((int(x),) for x in ids))
                con.execute(
                    f"INSERT INTO items (id, data) SELECT id, data FROM src{i}.items "
                    "WHERE id IN (SELECT id FROM keep) ORDER BY id"
                )
            con.execute(f"DETACH DATABASE src{i}")
        counts = dict(
            con.execute(
                "SELECT key, count(*) FROM items, json_each(items.data) GROUP BY key ORDER BY key"
            ).fetchall()
        )
        with con:
            con.execute("DROP TABLE keep")
            con.executemany("INSERT INTO fields (name, n) VALUES (?, ?)", sorted(counts.items()))
        return counts
    finally:
        con.close()


def _new_database(path: Path) -> sqlite3.Connection:
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; segment files are never rewritten")
    con = sqlite3.connect(str(path), uri=False)
    con.execute("PRAGMA journal_mode=OFF")  # a new file, fsynced and checksummed by the caller
    con.execute("PRAGMA synchronous=OFF")
    con.executescript(_SCHEMA)
    return con


def counts_of(texts: Iterable[str]) -> dict[str, int]:
    """Field -> number of items carrying it, over JSON object texts."""
    counts: dict[str, int] = {}
    for text in texts:
        if text != "{}":
            for key in json.loads(text):
                counts[key] = counts.get(key, 0) + 1
    return counts
