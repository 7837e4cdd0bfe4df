"""A corpus filtered by pair score, written in the format it came in, for the toolkit (and others)
to read back.

The reader that read the corpus (:attr:`retrieval.data.Corpus.reader`) decides the format:

=======================================================  ======================================
read as                                                  kept pairs written as
=======================================================  ======================================
JSON Lines / JSON manifest, Karpathy or COCO captions    a JSON Lines manifest (``.jsonl``)
JSON, an image folder (with or without sidecars or
``metadata.jsonl``), records given in Python
CSV / TSV manifest                                       a CSV / TSV manifest
Parquet or Arrow table, a folder of them, a              one Parquet file; image bytes are copied
``datasets.save_to_disk`` folder                         into it when the input held them
webdataset shards                                        webdataset shards (a folder), the images
                                                         copied with their kept captions
=======================================================  ======================================

A manifest row is one pair: ``image`` (relative to the manifest's folder when the image lies under
it, else absolute, or the ``tar://`` reference), ``caption``, ``image_id`` (when the source named
one), ``score`` and the pair's metadata (a field named like those is written ``meta_<field>``). An
image folder gets a manifest rather than a copy of its images: the files stay where they are.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.corpus.columns import ColumnTypes
from retrieval.io import atomic_path

__all__ = ["default_path", "output_kind", "write_filtered"]

FIXED = ("image", "caption", "image_id", "score")
SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "webdataset": ""}
Row = tuple[Any, float]  # (record, score)


def output_kind(reader: str) -> str:
    """``"jsonl"``, ``"csv"``, ``"tsv"``, ``"parquet"`` or ``"webdataset"`` for a corpus read by ``reader``."""
    text = reader.lower()
    if "webdataset" in text:
        return "webdataset"
    if "csv" in text or "tsv" in text:
        return "tsv" if "tsv" in text else "csv"
    if any(word in text for word in ("parquet", "arrow", "datasets", "tables")):
        return "parquet"
    return "jsonl"


def default_path(out: Path, reader: str) -> Path:
    """Beside the scores file ``out``: ``scores.parquet`` -> ``scores.kept.jsonl`` (or ``scores.kept/``)."""
    return out.with_name(f"{out.stem}.kept{SUFFIX[output_kind(reader)]}")


def write_filtered(rows: Sequence[Row], path: Path, reader: str) -> Path:
    """Write the kept ``(record, score)`` pairs to ``path`` in the format ``reader`` calls for."""
    kind = output_kind(reader)
    if kind == "webdataset":
        return _webdataset(rows, path)
    if kind == "parquet":
        return _parquet(rows, path)
    return _manifest(rows, path, kind)


def _image_value(image: str, folder: Path) -> str:
    if "://" in image:
        return image
    try:
        relative = os.path.relpath(image, folder)
    except ValueError:  # another drive
        return image
    return image if relative.startswith("..") else relative.replace(os.sep, "/")


def _row(record: Any, score: float, folder: Path | None, types: ColumnTypes) -> dict[str, Any]:
    image = str(record.image)
    row: dict[str, Any] = {
        "image": _image_value(image, folder) if folder is not None else image,
        "caption": record.caption,
    }
    if record.image_id is not None and record.image_id != image:
        row["image_id"] = record.image_id
    row["score"] = round(float(score), 6)
    row.update({types.column(k): v for k, v in (record.metadata or {}).items()})
    return row


def _manifest(rows: Sequence[Row], path: Path, kind: str) -> Path:
    types = ColumnTypes(reserved=FIXED)
    folder = path.parent.resolve()
    lines = [_row(record, score, folder, types) for record, score in rows]
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        if kind == "jsonl":
            fh.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        else:
            columns = list(dict.fromkeys(key for line in lines for key in line)) or list(FIXED)
            writer = csv.DictWriter(fh, columns, delimiter="\t" if kind == "tsv" else ",")
            writer.writeheader()
            for line in lines:
                writer.writerow({k: _cell(v) for k, v in line.items()})
    return path


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False)


def _parquet(rows: Sequence[Row], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval.corpus.media import read_media
    from retrieval.data.refs import is_row_ref

    with_bytes = any(is_row_ref(str(record.image)) for record, _ in rows)
    types = ColumnTypes(reserved=FIXED).observe(record.metadata or {} for record, _ in rows)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fixed_types = {
        "image": struct if with_bytes else pa.string(),
        "caption": pa.string(),
        "image_id": pa.string(),
        "score": pa.float32(),
    }
    schema = pa.schema([*(pa.field(n, t) for n, t in fixed_types.items()), *types.arrow_fields()])
    batch = 256 if with_bytes else 65_536
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(rows), 1), batch):
            part = rows[start : start + batch]
            images: list[Any] = [str(record.image) for record, _ in part]
            if with_bytes:  # a self-contained table: the bytes themselves, as datasets' Image feature
                images = [{"bytes": read_media(ref), "path": _name(ref)} for ref in images]
            fixed = {
                "image": (fixed_types["image"], images),
                "caption": (pa.string(), [record.caption for record, _ in part]),
                "image_id": (pa.string(), [record.image_id for record, _ in part]),
                "score": (pa.float32(), [score for _, score in part]),
            }
            writer.write_table(types.table(fixed, [record.metadata or {} for record, _ in part]))
    return path


def _name(ref: str) -> str:
    """A file name for the bytes a reference names (the row reference's own when it has none)."""
    return ref.rsplit("/", 1)[-1].replace("#", "-")


def _webdataset(rows: Sequence[Row], path: Path) -> Path:
    from retrieval.corpus.media import extension, read_media
    from retrieval.corpus.writers import open_writer

    by_image: dict[str, list[Row]] = {}
    for record, score in rows:
        by_image.setdefault(str(record.image), []).append((record, score))
    types = ColumnTypes()
    writer = open_writer("webdataset", path, types=types, caption_list=True, overwrite=True)
    try:
        for image, kept in by_image.items():
            data = read_media(image)
            first = kept[0][0]
            metadata = dict(first.metadata or {})
            if first.image_id is not None and first.image_id != image:
                metadata.setdefault("image_id", first.image_id)
            metadata["scores"] = [round(float(score), 6) for _, score in kept]
            writer.add(data, extension(image, data), [record.caption for record, _ in kept], metadata)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return path
