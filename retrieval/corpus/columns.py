"""Metadata dicts into typed table columns, for the Parquet files the corpus tools write.

Collection metadata is schemaless JSON: one field may hold an int in one item and a string in
another, a list in a third. A Parquet column has one type, and a streamed file fixes its schema
with the first row group. So the tools look at every value first (:class:`ColumnTypes`, one pass
over the rows or their metadata), then write: a field whose values are all booleans, all integers,
all numbers or all strings keeps that type; any other field (lists, dicts, mixed types) becomes a
string column holding JSON text (strings stay as they are). Missing values are nulls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ColumnTypes"]


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


def _merge(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b if a is None else a
    if b is None:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    return "json"


class ColumnTypes:
    """The type of each field seen so far, in first-seen order."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self.kinds: dict[str, str | None] = {}
        self.reserved = set(reserved)  # fields the writer sets itself: renamed ``meta_<name>`` here

    def column(self, field: str) -> str:
        """The column name of metadata ``field`` (``meta_<field>`` when it clashes with a fixed column)."""
        return f"meta_{field}" if field in self.reserved else field

    def observe(self, rows: Iterable[Mapping[str, Any]]) -> ColumnTypes:
        for row in rows:
            for field, value in row.items():
                kind = _kind(value)
                self.kinds[field] = _merge(self.kinds.get(field), kind) if field in self.kinds else kind
        return self

    def arrow_fields(self) -> list[Any]:
        """``pyarrow.field`` of every observed metadata field."""
        import pyarrow as pa

        types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), None: pa.string()}
        return [pa.field(self.column(f), types.get(k, pa.string())) for f, k in self.kinds.items()]

    def values(self, field: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The cells of ``field`` for ``rows``, converted to its column type."""
        kind = self.kinds.get(field)
        cells = [row.get(field) for row in rows]
        if kind == "float":
            return [None if v is None else float(v) for v in cells]
        if kind == "json":
            return [
                None if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for v in cells
            ]
        return cells

    def table(self, fixed: Mapping[str, tuple[Any, Sequence[Any]]], rows: Sequence[Mapping[str, Any]]) -> Any:
        """A ``pyarrow.Table``: the ``fixed`` columns (name -> (type, values)) first, then one column
        per observed metadata field filled from ``rows`` (one metadata dict per row)."""
        import pyarrow as pa

        arrays = [pa.array(list(values), type=kind) for kind, values in fixed.values()]
        fields = [pa.field(name, kind) for name, (kind, _) in fixed.items()]
        for field, arrow_field in zip(self.kinds, self.arrow_fields()):
            arrays.append(pa.array(self.values(field, rows), type=arrow_field.type))
            fields.append(arrow_field)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
