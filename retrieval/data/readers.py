"""Read a corpus from the formats users already hold, through one entry point.

``read_corpus(source)`` returns a :class:`~retrieval.data.records.Corpus` (image-caption pairs, images
alone, captions alone, and what was skipped); ``read_pairs(source)`` is its pairs, for training and
evaluation (a corpus without any pair is a clear error). Both take the same options. The reader
is chosen from the content, not from flags:

* a folder: a ``datasets.save_to_disk`` folder (``state.json``; a ``DatasetDict`` with
  ``dataset_dict.json`` and one folder per split), a clip_benchmark webdataset root
  (``ROOT/<split>/*.tar``), a folder of ``.tar`` shards, a folder of Parquet / Arrow tables (a hub
  dataset's ``data/`` folder, ``retrieval export --format parquet``), a Hugging Face image folder (images with a
  ``metadata.jsonl`` / ``.csv`` / ``.parquet`` naming them in a ``file_name`` column), or an image
  folder (sidecar ``.txt`` captions when there are some: :mod:`retrieval.data.folders`);
* a file, by its first bytes: Parquet (``PAR1``), Arrow IPC / Feather (``ARROW1`` or a stream),
  a tar shard (``ustar``), JSON Lines, a JSON document (a Karpathy split or a COCO captions file,
  :mod:`retrieval.data.caption_json`, else an array of rows), CSV / TSV, or a caption list (``.txt``:
  one caption per line, captions alone);
* a pattern: ``shards/{000..009}.tar``, ``{a,b}``, ``*`` / ``?`` globs; every file it names is
  read as above (:mod:`retrieval.data.shards`).

Rows of manifests and tables name the image (``image_column``: a path relative to ``image_root``,
default the manifest's folder; image bytes in Parquet / Arrow: :mod:`retrieval.data.tables`) and
the captions (``caption_column``: a string, a list, or a JSON list in a string). When the default
column is absent a usual name is taken instead (``file_name``, ``path``, ...; ``text``, ``captions``,
...; the one image-bytes column of a table) and said in :attr:`Corpus.notes`. A row with only an
image is an image alone; with only captions, captions alone. ``split`` keeps the rows whose
``split`` field is one of its comma-separated values, or picks ``<split>/`` or ``<split>.<ext>``
in a folder. Rows that cannot be used are skipped with where and why; nothing is dropped silently.
When nothing at all can be read, :class:`~retrieval.data.records.EmptyCorpusError` names the reader
tried and the first reasons.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retrieval.data import caption_json, tables
from retrieval.data.folders import IMAGE_EXTENSIONS, folder_images, read_image_folder
from retrieval.data.manifests import csv_rows, json_rows, jsonl_rows
from retrieval.data.records import Collector, Corpus, EmptyCorpusError, Pair, PairSet, Record, reason_kind
from retrieval.data.rows import ImageResolver, ReadOptions, add_rows, pick_columns
from retrieval.data.shards import (
    class_names,
    is_pattern,
    natural_key,
    read_shard,
    shard_split_folder,
    shards_of_pattern,
    split_shards,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "EmptyCorpusError",
    "Pair",
    "PairSet",
    "ReadOptions",
    "Record",
    "read_corpus",
    "read_pairs",
    "reason_kind",
]

MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".feather", ".txt")
HF_FOLDER_MANIFESTS = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def read_corpus(
    source: str | os.PathLike[str],
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    split: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Corpus:
    """Read every image and caption of ``source`` (see the module docstring for the formats).

    Raises ``FileNotFoundError`` when ``source`` does not exist (or a pattern names no file),
    :class:`~retrieval.data.records.EmptyCorpusError` (a ``ValueError``) when nothing could be read,
    and ``ValueError`` for a source that cannot be read as a whole (unknown format, no usable column).
    """
    options = ReadOptions(
        image_column, caption_column, id_column, split, os.fspath(image_root) if image_root else None
    )
    text = os.fspath(source)
    path = Path(text).expanduser()
    out = Collector(text, "")
    if not path.exists() and is_pattern(text):
        readers = [_read_path(file, out, options) for file in shards_of_pattern(text)]
        out.reader = " + ".join(dict.fromkeys(readers))
    elif not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected an image folder, a manifest, a table, .tar shards or a pattern"
        )
    else:
        out.reader = _read_path(path, out, options)
    corpus = out.result()
    if not corpus.records:
        raise EmptyCorpusError(_nothing_read(corpus))
    for note in corpus.notes:
        logger.info("%s", note)
    return corpus


def read_pairs(
    source: str | os.PathLike[str],
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    split: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> PairSet:
    """The image-caption pairs of ``source`` (read by :func:`read_corpus`, same options); images and
    captions without the other are listed in ``PairSet.skipped`` with why. A source without any pair
    raises :class:`~retrieval.data.records.UnpairedCorpusError` (a ``ValueError``) saying what it holds."""
    corpus = read_corpus(
        source,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        split=split,
        image_root=image_root,
    )
    return corpus.require_pairs()


def _nothing_read(corpus: Corpus) -> str:
    counts = corpus.skip_counts()
    if not corpus.skipped and corpus.notes:
        return f"nothing could be read from {corpus.source} (read as {corpus.reader}): " + "; ".join(
            corpus.notes
        )
    if not corpus.skipped:
        what = "nothing in it could be read as an image or a caption"
    else:
        by_reason = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
        first = "; ".join(f"{s.where}: {s.reason}" for s in corpus.skipped[:3])
        what = f"all {len(corpus.skipped)} entries were skipped ({by_reason}); first: {first}"
    notes = "".join(f" {note}." for note in corpus.notes)
    return (
        f"nothing could be read from {corpus.source} (read as {corpus.reader or 'nothing'}): {what}.{notes}"
    )


# -- choosing the reader -----------------------------------------------------------------------
def _read_path(path: Path, out: Collector, options: ReadOptions) -> str:
    """Read one file or folder into ``out``; returns the reader's name."""
    if path.is_dir():
        return _read_folder(path, out, options)
    kind = _file_kind(path)
    if kind in ("parquet", "arrow"):
        _read_table(path, kind, out, options)
        return "Parquet table" if kind == "parquet" else "Arrow table"
    if kind == "tar":
        read_shard(path, out, options.caption_column, options.id_column, class_names(path.parent))
        return "webdataset shard"
    if kind in ("csv", "tsv"):
        picked: list[tuple[str | None, str | None]] = []
        rows = csv_rows(path, lambda names: picked.append(pick_columns(names, options, path, out)), out.skip)
        add_rows(rows, path, out, options, picked)
        return f"{kind.upper()} manifest"
    if kind == "captions":
        _read_caption_list(path, out)
        return "caption list"
    if kind == "json":
        return _read_json(path, out, options)
    raise ValueError(
        f"cannot read pairs or images from {path}: its content is none of the formats read here (an image "
        "folder; .jsonl / .json / .csv / .tsv manifests; Parquet or Arrow tables; .tar shards; a Karpathy "
        "or COCO captions JSON; a .txt caption list; a datasets.save_to_disk folder)"
    )


def _file_kind(path: Path) -> str | None:
    table = tables.table_kind(path)
    if table is not None:
        return table
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    with path.open("rb") as fh:
        head = fh.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".txt":
        return "captions"
    if suffix in (".jsonl", ".json") or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "json"
    return None


def _read_folder(path: Path, out: Collector, options: ReadOptions) -> str:
    if tables.is_hf_dataset_dict(path):
        split_folder = tables.hf_split_folder(path, options.split)
        _read_hf_dataset(split_folder, out, options.replace(split=None))
        return f"datasets save_to_disk folder (split {split_folder.name})"
    if tables.is_hf_dataset(path):
        _read_hf_dataset(path, out, options)
        return "datasets save_to_disk folder"
    if options.split is not None:
        return _read_split(path, out, options)
    split_folder = shard_split_folder(path, None)
    if split_folder is not None:
        _read_shards(split_shards(split_folder), out, options, class_names(path))
        return f"webdataset root (split {split_folder.name})"
    for name in HF_FOLDER_MANIFESTS:
        if (path / name).is_file():
            _read_path(path / name, out, options)
            return f"image folder with {name}"
    shards = sorted(path.glob("*.tar"), key=lambda p: natural_key(p.name))
    if shards and not folder_images(path):
        _read_shards(shards, out, options, class_names(path))
        return "webdataset shards"
    table_files = [
        p
        for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name))
        if p.suffix.lower() in (".parquet", ".arrow", ".feather") and tables.table_kind(p) is not None
    ]
    if table_files and not folder_images(path):
        for file in table_files:
            _read_table(file, str(tables.table_kind(file)), out, options)
        return "folder of tables"
    if not read_image_folder(path, out, options.caption_column, options.id_column):
        out.note(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)}), no shard and no manifest")
    return "image folder"


def _read_split(path: Path, out: Collector, options: ReadOptions) -> str:
    """``split`` of a folder: ``<split>.<ext>`` beside the others, or the folder ``<split>/``."""
    split = str(options.split)
    for ext in MANIFEST_EXTENSIONS:
        candidate = path / f"{split}{ext}"
        if candidate.is_file():
            return _read_path(candidate, out, options.replace(split=None))
    folder = path / split
    if folder.is_dir():
        if any(folder.glob("*.tar")):
            _read_shards(split_shards(folder), out, options, class_names(folder))
            return f"webdataset root (split {split})"
        return _read_path(folder, out, options.replace(split=None))
    shard_split_folder(path, split)  # a webdataset root without this split: the error names its splits
    raise ValueError(
        f"{path} has no split {split!r}: looked for {folder}/ and {path}/{split}.<{'|'.join(e[1:] for e in MANIFEST_EXTENSIONS)}>; "
        "drop --split to read the folder as it is"
    )


def _read_shards(
    shards: Iterable[Path], out: Collector, options: ReadOptions, classes: list[str] | None
) -> None:
    for shard in shards:
        read_shard(shard, out, options.caption_column, options.id_column, classes)


def _read_hf_dataset(folder: Path, out: Collector, options: ReadOptions) -> None:
    for file in tables.hf_table_files(folder):
        _read_table(file, "arrow", out, options)


def _read_table(path: Path, kind: str, out: Collector, options: ReadOptions) -> None:
    schema = tables.table_schema(path, kind)
    byte_columns = tables.image_bytes_columns(schema)
    picked = [pick_columns(schema.names, options, path, out, byte_columns)]
    image = picked[0][0]
    if kind == "parquet" and image in byte_columns:
        remark = tables.slow_random_access(path, image)
        if remark:
            out.note(remark)
    add_rows(tables.table_rows(path, kind, image), path, out, options, picked)


def _read_caption_list(path: Path, out: Collector) -> None:
    """A ``.txt`` file with one caption per line: captions alone (blank lines are left out)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                out.skip(where, "invalid UTF-8", "text")
                continue
            if line.strip():
                out.add(where, None, line, None, {}, no_image="no image: a caption list holds captions alone")


def _read_json(path: Path, out: Collector, options: ReadOptions) -> str:
    """A JSON Lines file, a Karpathy split or COCO captions document, or a JSON array of rows."""
    data: Any = None
    if path.suffix.lower() != ".jsonl":
        with path.open("rb") as fh:
            first = fh.readline()
            after = fh.read(4096).strip()
        head = first.decode("utf-8-sig", errors="replace").strip()
        if head.startswith("[") or not head.startswith("{"):
            data = caption_json.load_document(path)
        else:
            try:
                parsed = json.loads(head)
            except (json.JSONDecodeError, RecursionError):
                data = caption_json.load_document(path)  # a document over several lines
            else:
                listed = isinstance(parsed, dict) and any(
                    isinstance(parsed.get(k), list) for k in ("pairs", "data", "rows", "images")
                )
                if listed and not after:
                    data = parsed
    if data is None:
        add_rows(jsonl_rows(path, out.skip), path, out, options, [])
        return "JSON Lines manifest"
    kind = caption_json.benchmark_kind(data)
    if kind is None:
        add_rows(json_rows(path, data, out.skip), path, out, options, [])
        return "JSON manifest"
    resolve = ImageResolver(
        Path(options.image_root).expanduser() if options.image_root else path.parent.resolve()
    )
    if kind == "coco":
        if options.split is not None:
            raise ValueError(
                f"{path} is a COCO captions file: its split is the file itself (captions_val2017.json, "
                "captions_train2017.json); drop --split"
            )
        first = caption_json.read_coco(data, path, out, resolve, options.id_column)
        name = "COCO captions JSON"
    else:
        first = caption_json.read_karpathy(data, path, out, resolve, options.split, options.id_column)
        name = "Karpathy split JSON"
    if first and not any(os.path.exists(image) for image in first):
        root = options.image_root or path.parent
        raise FileNotFoundError(
            f"the images of {path} ({name}) are not under {root}: {first[0]} does not exist; pass "
            "--image-root (image_root=) naming the folder that holds them (for COCO, the folder with "
            "train2014/ and val2014/ or val2017/; for Flickr30k, flickr30k-images/)"
        )
    return name
