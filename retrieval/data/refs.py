"""References to image bytes kept in a row of a table file, and reading them back.

Parquet and Arrow files (IPC file / Feather v2, or the IPC stream files ``datasets.save_to_disk``
writes) often hold the images themselves: a binary column, or the ``{bytes, path}`` struct that
Hugging Face ``datasets`` writes for its ``Image`` feature. A reader does not copy those bytes; it
names them, as ``tar://`` names a member of a webdataset shard:

    parquet://<absolute file path>#<column>/<row>
    arrow://<absolute file path>#<column>/<row>

``<column>`` is percent-encoded (it never holds ``#`` or ``/``) and ``<row>`` is the 0-based row of
the file. A reference is stable while the file is unchanged; the embedding job's identity key adds
the file's size and modification time, so a rewritten file is embedded again.

Reading is bounded by what is read: an Arrow file is memory-mapped (a row costs its own bytes); a
Parquet row reads its row group's column once per process (kept in a small cache bounded in bytes),
or, for a row group larger than that cache, the batch of rows around it (rows read in order, as
embedding reads them, cost one pass). Every failure is an ``OSError`` naming the reference.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import urllib.parse
from typing import Any

__all__ = [
    "ROW_PREFIXES",
    "is_row_ref",
    "read_row_bytes",
    "row_ref",
    "row_ref_file",
    "split_row_ref",
]

ROW_PREFIXES = ("parquet://", "arrow://")
CACHE_BYTES = 256 * 2**20  # row-group columns kept per process
BATCH_ROWS = 64  # rows read at a time from a row group too large for the cache


def is_row_ref(ref: object) -> bool:
    """Whether ``ref`` is a ``parquet://`` or ``arrow://`` reference."""
    return isinstance(ref, str) and ref.startswith(ROW_PREFIXES)


def row_ref(kind: str, path: str | os.PathLike[str], column: str, row: int) -> str:
    """The reference of ``column`` in row ``row`` of the ``kind`` ("parquet" | "arrow") file ``path``."""
    if kind not in ("parquet", "arrow"):
        raise ValueError(f"kind must be 'parquet' or 'arrow', received {kind!r}")
    quoted = urllib.parse.quote(column, safe="")
    return f"{kind}://{os.path.abspath(path)}#{quoted}/{int(row)}"


def split_row_ref(ref: str) -> tuple[str, str, str, int]:
    """``(kind, file path, column, row)`` of a row reference; ``ValueError`` when malformed."""
    kind, sep, body = ref.partition("://")
    path, hash_, tail = body.rpartition("#")
    column, slash, row = tail.partition("/")
    if kind not in ("parquet", "arrow") or not sep or not hash_ or not path or not slash or not row.isdigit():
        raise ValueError(
            f"malformed row reference {ref!r}: expected '{kind or 'parquet'}://<file>#<column>/<row number>'"
        )
    return kind, path, urllib.parse.unquote(column), int(row)


def row_ref_file(ref: str) -> str:
    """The file a row reference points into."""
    return split_row_ref(ref)[1]


def read_row_bytes(ref: str) -> bytes:
    """The image bytes a row reference names; ``OSError`` when they cannot be read."""
    try:
        kind, path, column, row = split_row_ref(ref)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    try:
        stat = os.stat(path)
        stamp = (path, stat.st_mtime_ns, stat.st_size)
        value = _arrow_cell(stamp, column, row) if kind == "arrow" else _parquet_cell(stamp, column, row)
    except OSError as exc:
        raise OSError(f"cannot read {ref}: {exc}") from exc
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # pyarrow's errors derive from these
        raise OSError(f"cannot read {ref}: {type(exc).__name__}: {exc}") from exc
    if value is None:
        raise OSError(f"cannot read {ref}: the row holds no image bytes")
    return value


def _bytes_of(array: Any, index: int) -> bytes | None:
    """The bytes at ``index`` of a binary array or of the ``bytes`` field of a struct array."""
    import pyarrow as pa

    if pa.types.is_struct(array.type):
        if array.is_null()[index].as_py():
            return None
        array = array.field("bytes")
    value = array[index].as_py()
    return bytes(value) if value is not None else None


# -- Arrow: memory-mapped, random access is cheap ---------------------------------------------
@functools.lru_cache(maxsize=16)
def _arrow_table(stamp: tuple[str, int, int]) -> Any:
    import pyarrow as pa

    source = pa.memory_map(stamp[0], "r")
    with open(stamp[0], "rb") as fh:
        magic = fh.read(6)
    reader = pa.ipc.open_file(source) if magic == b"ARROW1" else pa.ipc.open_stream(source)
    return reader.read_all()  # zero-copy: the buffers stay in the mapping


def _arrow_cell(stamp: tuple[str, int, int], column: str, row: int) -> bytes | None:
    table = _arrow_table(stamp)
    if column not in table.column_names:
        raise KeyError(f"no column {column!r}")
    if not 0 <= row < table.num_rows:
        raise IndexError(f"row {row} is past the file's {table.num_rows} rows")
    chunked = table.column(column)
    for chunk in chunked.chunks:
        if row < len(chunk):
            return _bytes_of(chunk, row)
        row -= len(chunk)
    raise IndexError("row not found")  # pragma: no cover - counted above


# -- Parquet: one row group's column at a time ------------------------------------------------
@functools.lru_cache(maxsize=16)
def _parquet_layout(stamp: tuple[str, int, int]) -> tuple[Any, list[int], dict[str, int], threading.Lock]:
    """The open file, the first row of each row group (plus the total), each top-level column's
    uncompressed size in its largest row group, and the lock its reads take (one reader per file)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stamp[0])
    meta = parquet.metadata
    starts = [0]
    sizes: dict[str, int] = collections.defaultdict(int)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        starts.append(starts[-1] + group.num_rows)
        per_column: dict[str, int] = collections.defaultdict(int)
        for c in range(group.num_columns):
            chunk = group.column(c)
            per_column[chunk.path_in_schema.split(".")[0]] += chunk.total_uncompressed_size
        for name, size in per_column.items():
            sizes[name] = max(sizes[name], size)
    return parquet, starts, dict(sizes), threading.Lock()


class _GroupCache:
    """Row-group columns read whole, least recently used first out, within ``CACHE_BYTES``."""

    def __init__(self) -> None:
        self.items: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[Any, ...], load: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        array = load()
        with self.lock:
            if key not in self.items:
                self.items[key] = array
                self.bytes += array.nbytes
                while self.bytes > CACHE_BYTES and len(self.items) > 1:
                    _, old = self.items.popitem(last=False)
                    self.bytes -= old.nbytes
        return array


class _Cursor:
    """Batches of a large row group read in order; a row before the current batch starts over."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: Any = None
        self.start = 0
        self.batch: Any = None

    def cell(
        self, parquet: Any, file_lock: threading.Lock, group: int, column: str, row: int
    ) -> bytes | None:
        with self.lock, file_lock:
            if self.batch is None or row < self.start:
                self.batches = parquet.iter_batches(
                    batch_size=BATCH_ROWS, row_groups=[group], columns=[column]
                )
                self.start, self.batch = 0, None
            while self.batch is None or row >= self.start + self.batch.num_rows:
                if self.batch is not None:
                    self.start += self.batch.num_rows
                self.batch = next(self.batches)
            return _bytes_of(self.batch.column(0), row - self.start)


_GROUPS = _GroupCache()
_CURSORS: dict[tuple[Any, ...], _Cursor] = {}
_CURSORS_LOCK = threading.Lock()


def _parquet_cell(stamp: tuple[str, int, int], column: str, row: int) -> bytes | None:
    import bisect

    parquet, starts, sizes, file_lock = _parquet_layout(stamp)
    if column not in sizes:
        raise KeyError(f"no column {column!r}")
    if not 0 <= row < starts[-1]:
        raise IndexError(f"row {row} is past the file's {starts[-1]} rows")
    group = bisect.bisect_right(starts, row) - 1
    offset = row - starts[group]
    if sizes[column] <= CACHE_BYTES:

        def load() -> Any:
            with file_lock:
                return parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()

        return _bytes_of(_GROUPS.get((stamp, group, column), load), offset)
    with _CURSORS_LOCK:
        if len(_CURSORS) > 64:
            _CURSORS.clear()
        cursor = _CURSORS.setdefault((stamp, group, column), _Cursor())
    return cursor.cell(parquet, file_lock, group, column, offset)
