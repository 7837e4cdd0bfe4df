"""Rows of table files: Parquet, Arrow IPC (file / Feather v2, or stream), and the folders
``datasets.save_to_disk`` writes, read with pyarrow alone (the ``datasets`` library is not needed).

An image column may hold paths (strings), image bytes (a binary column) or the ``{bytes, path}``
struct of Hugging Face ``datasets``' ``Image`` feature. Bytes are never copied into the rows: a cell
with bytes becomes a reference to them (:mod:`retrieval.data.refs`), a struct without bytes its
``path``. Other binary columns are left out of the rows (they would not fit in metadata).

A ``save_to_disk`` folder holds ``state.json`` (its Arrow files, ``_data_files``) and
``dataset_info.json`` (the features); a ``DatasetDict`` folder holds ``dataset_dict.json`` and
one such folder per split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from retrieval.data import refs
from retrieval.data.refs import row_ref

logger = logging.getLogger(__name__)

__all__ = ["hf_split_folder", "hf_table_files", "image_bytes_columns", "table_kind", "table_rows"]

BATCH_ROWS = 1024
Rows = Iterator[tuple[str, dict[str, Any]]]


def table_kind(path: Path) -> str | None:
    """``"parquet"`` or ``"arrow"`` from the file's first bytes, ``None`` for anything else."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:6] == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":
        return "arrow"
    return None


def _is_bytes_type(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def image_bytes_columns(schema: Any) -> list[str]:
    """Top-level columns holding image bytes (binary, or a struct with a ``bytes`` field)."""
    return [field.name for field in schema if _is_bytes_type(field.type)]


def _open(path: Path, kind: str) -> tuple[Any, Callable[[], Iterator[Any]]]:
    """``(schema, batches())`` of a table file."""
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return parquet.schema_arrow, lambda: parquet.iter_batches(batch_size=BATCH_ROWS)
    source = pa.memory_map(str(path), "r")
    with path.open("rb") as fh:
        is_file = fh.read(6) == b"ARROW1"
    reader = pa.ipc.open_file(source) if is_file else pa.ipc.open_stream(source)
    if is_file:
        return reader.schema, lambda: (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader.schema, lambda: iter(reader)


def table_schema(path: Path, kind: str) -> Any:
    """The Arrow schema of a table file."""
    return _open(path, kind)[0]


def _valid(array: Any) -> Any:
    """``[n]`` bool: which values of ``array`` are not null (from its validity bitmap; no compute
    kernels, whose first call imports pandas)."""
    import numpy as np

    n, offset = len(array), array.offset
    bitmap = array.buffers()[0]
    if bitmap is None or array.null_count == 0:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[offset : offset + n].astype(bool)


def _nonempty(array: Any) -> Any:
    """``[n]`` bool: which values of a binary array hold at least one byte (and are not null)."""
    import numpy as np
    import pyarrow as pa

    n, offset = len(array), array.offset
    dtype = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=dtype, count=offset + n + 1)[offset:]
    return (np.diff(offsets) > 0) & _valid(array)


def _image_cells(kind: str, path: Path, column: str, array: Any, first_row: int) -> list[str | None]:
    """The image column of one batch as row references (bytes) or paths (struct without bytes)."""
    import pyarrow as pa

    t = array.type
    if pa.types.is_struct(t):
        has = _nonempty(array.field("bytes")) & _valid(array)
        paths = array.field("path").to_pylist() if t.get_field_index("path") >= 0 else [None] * len(array)
        paths = [p if ok else None for p, ok in zip(paths, _valid(array))]
    elif _is_bytes_type(t):
        has = _nonempty(array)
        paths = [None] * len(array)
    else:
        return array.to_pylist()
    return [
        row_ref(kind, path, column, first_row + i)
        if flag
        else (paths[i] if isinstance(paths[i], str) else None)
        for i, flag in enumerate(has.tolist())
    ]


def table_rows(path: Path, kind: str, image_column: str | None) -> Rows:
    """Rows of a Parquet / Arrow file as ``(where, row dict)``; the ``image_column`` cell is a path,
    a row reference to its bytes, or ``None``; other byte columns are left out."""
    schema, batches = _open(path, kind)
    bytes_columns = set(image_bytes_columns(schema))
    number = 0
    for batch in batches():
        names = batch.schema.names
        columns: dict[str, list[Any]] = {}
        for name in names:
            if name == image_column:
                columns[name] = _image_cells(kind, path, name, batch.column(name), number)
            elif name not in bytes_columns:
                columns[name] = batch.column(name).to_pylist()
        for i in range(batch.num_rows):
            yield f"{path}:row {number + i}", {name: values[i] for name, values in columns.items()}
        number += batch.num_rows


def slow_random_access(path: Path, column: str) -> str | None:
    """A remark when a Parquet file keeps ``column`` in row groups larger than the read cache:
    rows read in order (embedding) stay fast, rows read in a random order (training) do not."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    largest = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = sum(
            group.column(c).total_uncompressed_size
            for c in range(group.num_columns)
            if group.column(c).path_in_schema.split(".")[0] == column
        )
        largest = max(largest, size)
    if largest <= refs.CACHE_BYTES:
        return None
    return (
        f"{path} keeps its images in row groups of up to {largest / 2**20:.0f} MB: reading them in order "
        "(embed, eval) is fast, in a random order (train) slow; rewrite it with smaller row groups, e.g. "
        "pyarrow.parquet.write_table(table, path, row_group_size=100)"
    )


# -- datasets.save_to_disk folders ---------------------------------------------------------------
def is_hf_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def is_hf_dataset_dict(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file()


def hf_split_folder(folder: Path, split: str | None) -> Path:
    """The folder of ``split`` in a ``DatasetDict`` folder; without ``split``, its only split (or a
    ``ValueError`` naming the splits)."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{folder / 'dataset_dict.json'} is not a datasets dict description: {exc}") from exc
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"{folder / 'dataset_dict.json'} should list its splits; it holds {splits!r}")
    if split is None:
        if len(splits) == 1:
            return folder / splits[0]
        raise ValueError(
            f"{folder} is a datasets DatasetDict with the splits {splits}: name one with --split (split=)"
        )
    if split not in splits:
        raise ValueError(
            f"{folder} has no split {split!r}; its splits are {splits}: pass one of them to --split"
        )
    return folder / split


def hf_table_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in order (``state.json``'s ``_data_files``)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{folder / 'state.json'} does not list the dataset's files (_data_files): {exc}"
        ) from exc
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the data files {missing[:3]} that its state.json lists")
    return files
