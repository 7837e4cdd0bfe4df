"""Schemaless metadata into typed Parquet columns; the format a filtered corpus is written in."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from retrieval.corpus.columns import ColumnTypes
from retrieval.corpus.filtered import output_kind


def test_each_field_gets_one_type_that_holds_every_value() -> None:
    rows = [
        {"n": 1, "x": 1, "flag": True, "tag": "a", "mixed": 3, "list": [1, 2], "none": None},
        {"n": 2, "x": 2.5, "flag": False, "tag": None, "mixed": "three", "list": None},
        {"extra": {"k": "v"}, "group": 7},
    ]
    types = ColumnTypes(reserved=("group",)).observe(rows)
    table = types.table({"id": (pa.int64(), [0, 1, 2])}, rows)
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("x").type == pa.float64()
    assert table.schema.field("flag").type == pa.bool_()
    assert table.schema.field("tag").type == pa.string() and table.schema.field("none").type == pa.string()
    assert table.schema.field("mixed").type == pa.string()
    assert table.column("mixed").to_pylist() == ["3", "three", None]  # JSON text; strings as they are
    assert [json.loads(v) if v else v for v in table.column("list").to_pylist()] == [[1, 2], None, None]
    assert table.column("extra").to_pylist() == [None, None, '{"k": "v"}']
    assert table.column("meta_group").to_pylist() == [None, None, 7]  # clashes with a fixed column: renamed
    assert table.column_names[0] == "id"


@pytest.mark.parametrize(
    ("reader", "kind"),
    [
        ("JSON Lines manifest", "jsonl"),
        ("JSON manifest", "jsonl"),
        ("image folder", "jsonl"),
        ("image folder with metadata.jsonl", "jsonl"),
        ("Karpathy split JSON", "jsonl"),
        ("CSV manifest", "csv"),
        ("TSV manifest", "tsv"),
        ("Parquet table", "parquet"),
        ("Arrow table", "parquet"),
        ("datasets save_to_disk folder", "parquet"),
        ("folder of tables", "parquet"),
        ("webdataset shard", "webdataset"),
        ("webdataset root (split test)", "webdataset"),
        ("records", "jsonl"),
    ],
)
def test_the_filtered_format_follows_the_reader(reader: str, kind: str) -> None:
    assert output_kind(reader) == kind
