"""Writing groups of near-duplicates: ``groups.jsonl`` (one line per group) and ``groups.parquet``
(one row per member), streamed, in memory bounded by the largest group.

A group arrives as the ids of its members, the kept one first. For every member the writer reads
its metadata and its vector from the collection and records its cosine with the kept member
(``score``: 1.0 for the kept one; under the connected-components policy a member may sit below
the threshold, joined through others).

``groups.jsonl``::

    {"group": 0, "modality": "image", "size": 3, "kept": 17,
     "members": [{"id": 17, "keep": true, "score": 1.0, "metadata": {...}}, ...]}

``groups.parquet``: columns ``group``, ``modality``, ``id``, ``keep``, ``score`` and one column per
metadata field (typed as :mod:`retrieval.corpus.columns` says; a field named like a fixed
column is written ``meta_<field>``). It is made from the JSONL file once that is complete (two
passes: types, then rows), so its schema covers every member.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.columns import ColumnTypes
from retrieval.corpus.neighbours import unit_rows
from retrieval.io import atomic_path

__all__ = ["GroupWriter", "read_groups"]

FIXED = ("group", "modality", "id", "keep", "score")
ROWS_PER_GROUP = 65_536  # Parquet rows written at a time


class GroupWriter:
    """Streams groups into ``folder``/``groups.jsonl``, then ``groups.parquet`` on :meth:`finish`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.jsonl = self.folder / "groups.jsonl"
        self.parquet = self.folder / "groups.parquet"
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.jsonl))
        self._fh = self._stack.enter_context(tmp.open("w", encoding="utf-8"))
        self.groups = 0
        self.members = 0

    def add(self, collection: Any, modality: str | None, groups: list[np.ndarray]) -> None:
        """Write ``groups`` (id arrays, kept member first) of one modality."""
        if not groups:
            return
        ids = np.concatenate(groups)
        metadata = collection.get(ids)
        vectors = unit_rows(collection.vectors(ids))  # [m, d]
        start = 0
        for members in groups:
            block = vectors[start : start + len(members)]  # [s, d]
            scores = block @ block[0]  # [s]: cosine with the kept member
            line = {
                "group": self.groups,
                "modality": modality,
                "size": len(members),
                "kept": int(members[0]),
                "members": [
                    {"id": int(i), "keep": j == 0, "score": round(float(s), 6), "metadata": meta}
                    for j, (i, s, meta) in enumerate(
                        zip(members, scores, metadata[start : start + len(members)])
                    )
                ],
            }
            self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.groups += 1
            self.members += len(members)
            start += len(members)

    def finish(self) -> None:
        """Commit ``groups.jsonl`` and write ``groups.parquet`` from it."""
        self._stack.close()
        _jsonl_to_parquet(self.jsonl, self.parquet)

    def abort(self) -> None:
        """Drop what was written (the files on disk stay as they were)."""
        aborted = RuntimeError("aborted")
        self._stack.__exit__(RuntimeError, aborted, None)


def read_groups(path: str | Path) -> Iterator[dict[str, Any]]:
    """The groups of a ``groups.jsonl`` file, one dict per line."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _jsonl_to_parquet(jsonl: Path, parquet: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = ColumnTypes(reserved=FIXED)
    for group in read_groups(jsonl):
        types.observe(member["metadata"] or {} for member in group["members"])
    fixed_types = {
        "group": pa.int64(),
        "modality": pa.string(),
        "id": pa.int64(),
        "keep": pa.bool_(),
        "score": pa.float32(),
    }
    schema = pa.schema([*(pa.field(n, t) for n, t in fixed_types.items()), *types.arrow_fields()])
    with atomic_path(parquet) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict[str, Any]] = []
        written = 0
        for group in read_groups(jsonl):
            rows += [{"group": group["group"], "modality": group["modality"], **m} for m in group["members"]]
            if len(rows) >= ROWS_PER_GROUP:
                writer.write_table(_table(rows, types, fixed_types))
                written, rows = written + len(rows), []
        if rows or not written:  # an empty file still carries its schema
            writer.write_table(_table(rows, types, fixed_types))


def _table(rows: list[dict[str, Any]], types: ColumnTypes, fixed_types: dict[str, Any]) -> Any:
    fixed = {name: (kind, [row[name] for row in rows]) for name, kind in fixed_types.items()}
    return types.table(fixed, [row["metadata"] or {} for row in rows])
