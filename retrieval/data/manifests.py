"""Rows of text manifest files (JSON Lines, JSON, CSV/TSV) as ``(where, row dict)``; Parquet and
Arrow files are read by :mod:`retrieval.data.tables`.

A row that cannot be read (not UTF-8, not JSON, nested too deeply, not an object, a CSV field
over the ``csv`` module's size limit) is reported through ``skip(where, reason)`` and the read
goes on; what a row must hold is checked by :mod:`retrieval.data.readers`.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

SkipFn = Callable[[str, str], None]  # (where, reason) of a row that was skipped


def jsonl_rows(path: Path, skip: SkipFn) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a JSON Lines file; a line that is not UTF-8, not JSON, nested too deeply or not an
    object is skipped with its reason and the read goes on."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                skip(where, "invalid UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                skip(where, f"invalid JSON: {exc.msg}")
                continue
            except RecursionError:
                skip(where, "JSON nested too deeply")
                continue
            if not isinstance(row, dict):
                skip(where, f"expected a JSON object, found {type(row).__name__}")
                continue
            yield where, row


def json_rows(path: Path, data: Any, skip: SkipFn) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a parsed ``.json`` manifest: one array of row objects (or ``{"pairs" | "data" |
    "rows" | "images": [...]}``)."""
    if isinstance(data, dict):
        data = next(
            (data[k] for k in ("pairs", "data", "rows", "images") if isinstance(data.get(k), list)), None
        )
    if not isinstance(data, list):
        raise ValueError(
            f'{path} should hold a JSON array of row objects, e.g. [{{"image": ..., "caption": ...}}]'
        )
    for number, row in enumerate(data):
        if isinstance(row, dict):
            yield f"{path}:item {number}", row
        else:
            skip(f"{path}:item {number}", f"expected a JSON object, found {type(row).__name__}")


# Characters that stand for undecodable bytes when text is decoded with errors="surrogateescape".
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _decoded_lines(fh: IO[bytes]) -> Iterator[str]:
    """Physical lines as text; bytes that are not UTF-8 become lone surrogates, so the row that
    holds them can be skipped after parsing while the rest of the file is read."""
    for number, raw in enumerate(fh):
        if number == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        yield raw.decode("utf-8", errors="surrogateescape")


def csv_rows(
    path: Path, check_header: Callable[[list[str]], None], skip: SkipFn
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a CSV/TSV file; ``check_header`` sees the column names first (and raises when they
    cannot do). A row with a field over the ``csv`` module's size limit or with bytes that are not
    UTF-8 is skipped with its reason and the read goes on."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as fh:
        reader = csv.reader(_decoded_lines(fh), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            header = []
        except csv.Error as exc:
            raise ValueError(f"{path}: cannot read the header line: {exc}") from exc
        check_header(header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                reason = str(exc)
                if "field larger than field limit" in reason:
                    reason = (
                        f"field larger than the csv module's limit of {csv.field_size_limit()} characters"
                    )
                skip(f"{path}:{reader.line_num}", reason)
                continue
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if any(_UNDECODABLE.search(value) for value in row):
                skip(where, "invalid UTF-8")
                continue
            values = dict(zip(header, row))
            values.update((name, None) for name in header[len(row) :])
            yield where, values
