"""Datasets the toolkit reads back (:func:`retrieval.data.read_corpus`), written record by record.

A record is an image (its bytes and file type) with its captions and metadata, or captions alone.
Three layouts, the ones the field exchanges:

* ``folder`` -- ``images/00000000.jpg`` ... and ``metadata.jsonl`` (one row per record:
  ``file_name``, ``caption``, the metadata): a Hugging Face *image folder*
  (``datasets.load_dataset("imagefolder", data_dir=...)`` loads it too).
* ``parquet`` -- ``data-00000.parquet`` ...: an ``image`` column of ``{bytes, path}`` structs (the layout
  of ``datasets``' ``Image`` feature), ``caption``, then one typed column per metadata field
  (:mod:`retrieval.corpus.columns`).
* ``webdataset`` -- ``shard-00000.tar`` ...: per record ``KEY.<ext>`` (the image), ``KEY.txt`` (the
  captions, one per line) and ``KEY.json`` (the metadata), as img2dataset writes them.

``caption`` holds a string when every record has at most one caption, else a list of strings
(both read back the same). Files of ``shard_size`` records each; the folder is written under a
temporary name and swapped into place on :meth:`DatasetWriter.close` (:func:`retrieval.io.staged_directory`),
so an interrupted export leaves no half dataset.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.corpus.columns import ColumnTypes
from retrieval.io import staged_directory

__all__ = ["FORMATS", "DatasetWriter", "check_target", "open_writer"]

FORMATS = ("folder", "parquet", "webdataset")
FIXED = ("file_name", "image", "caption")


class DatasetWriter(abc.ABC):
    """Base of the three layouts: :meth:`add` records, then :meth:`close` (or :meth:`abort`)."""

    def __init__(self, folder: Path, shard_size: int, types: ColumnTypes, caption_list: bool) -> None:
        self.target = folder
        self.shard_size = int(shard_size)
        self.types = types
        self.caption_list = caption_list
        self._stage = staged_directory(folder)
        self.folder = self._stage.__enter__()
        self.count = 0
        self.images = 0

    def _caption(self, captions: Sequence[str]) -> Any:
        if self.caption_list:
            return list(captions)
        return captions[0] if captions else None

    def add(self, image: bytes | None, ext: str, captions: Sequence[str], metadata: dict[str, Any]) -> None:
        """Write one record: ``image`` bytes (``None``: captions alone) with extension ``ext``."""
        self._add(image, ext, list(captions), metadata)
        self.count += 1
        self.images += image is not None

    @abc.abstractmethod
    def _add(self, image: bytes | None, ext: str, captions: list[str], metadata: dict[str, Any]) -> None:
        """Write one record in the writer's format."""

    def _finish(self) -> None:
        """Flush what is buffered (before the folder is swapped into place); nothing by default."""
        return None

    def close(self) -> Path:
        """Finish the files and put the folder in place; returns it."""
        self._finish()
        self._stage.__exit__(None, None, None)
        return self.target

    def abort(self) -> None:
        """Drop everything written; the target folder is left as it was."""
        with contextlib.suppress(Exception):
            self._abort_files()
        failure = RuntimeError("export aborted")
        with contextlib.suppress(RuntimeError):
            self._stage.__exit__(RuntimeError, failure, None)

    def _abort_files(self) -> None:  # close what a writer keeps open; nothing by default
        return None

    def _key(self) -> str:
        return f"{self.count:08d}"


class FolderWriter(DatasetWriter):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        (self.folder / "images").mkdir()
        self._rows = (self.folder / "metadata.jsonl").open("w", encoding="utf-8")

    def _add(self, image: bytes | None, ext: str, captions: list[str], metadata: dict[str, Any]) -> None:
        row: dict[str, Any] = {}
        if image is not None:
            name = f"images/{self._key()}{ext}"
            (self.folder / name).write_bytes(image)
            row["file_name"] = name
        row["caption"] = self._caption(captions)
        row.update({self.types.column(k): v for k, v in metadata.items()})
        self._rows.write(json.dumps(row, ensure_ascii=False) + "\n")

    def _finish(self) -> None:
        self._rows.close()

    def _abort_files(self) -> None:
        self._rows.close()


class ParquetWriter(DatasetWriter):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._buffer: list[tuple[bytes | None, str, list[str], dict[str, Any]]] = []
        self._files = 0

    def _add(self, image: bytes | None, ext: str, captions: list[str], metadata: dict[str, Any]) -> None:
        self._buffer.append((image, f"{self._key()}{ext}", captions, metadata))
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self._buffer
        struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        images = [None if data is None else {"bytes": data, "path": name} for data, name, _, _ in rows]
        caption_type = pa.list_(pa.string()) if self.caption_list else pa.string()
        table = self.types.table(
            {
                "image": (struct, images),
                "caption": (caption_type, [self._caption(c) for _, _, c, _ in rows]),
            },
            [m for _, _, _, m in rows],
        )
        pq.write_table(table, self.folder / f"data-{self._files:05d}.parquet", row_group_size=256)
        self._files += 1
        self._buffer = []

    def _finish(self) -> None:
        if self._buffer or not self._files:
            self._flush()


class WebdatasetWriter(DatasetWriter):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._tar: tarfile.TarFile | None = None
        self._shards = 0
        self._in_shard = 0

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def _add(self, image: bytes | None, ext: str, captions: list[str], metadata: dict[str, Any]) -> None:
        if self._tar is None or self._in_shard >= self.shard_size:
            if self._tar is not None:
                self._tar.close()
            shard = self.folder / f"shard-{self._shards:05d}.tar"
            self._tar = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in _finish
            self._shards += 1
            self._in_shard = 0
        key = self._key()
        if image is not None:
            self._member(f"{key}{ext}", image)
        if captions:
            self._member(f"{key}.txt", "\n".join(c.replace("\n", " ") for c in captions).encode("utf-8"))
        self._member(f"{key}.json", json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
        self._in_shard += 1

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def _abort_files(self) -> None:
        self._finish()


def open_writer(
    format: str,
    folder: str | Path,
    *,
    types: ColumnTypes,
    caption_list: bool,
    shard_size: int = 10_000,
    overwrite: bool = False,
) -> DatasetWriter:
    """A writer of ``format`` ("folder" | "parquet" | "webdataset") into ``folder``; ``types`` holds
    the metadata fields' types (observed beforehand), ``caption_list`` whether some record has several
    captions. An existing non-empty ``folder`` is refused unless ``overwrite``."""
    writers = {"folder": FolderWriter, "parquet": ParquetWriter, "webdataset": WebdatasetWriter}
    if format not in writers:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {list(writers)}")
    check_target(folder, overwrite)
    return writers[format](Path(folder), shard_size, types, caption_list)


def check_target(folder: str | Path, overwrite: bool) -> None:
    """``folder`` may receive a dataset: absent, empty, or ``overwrite``; ``ValueError`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; expected a folder to write the dataset into (--out)")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ValueError(
            f"{folder} exists and is not empty: choose another --out, or pass --overwrite to replace it"
        )
