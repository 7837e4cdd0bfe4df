"""Rows of manifests and tables into records: which columns hold the images and the captions,
image paths resolved against the image root, and the rules for rows that hold only one of them.

Shared by every reader of rows (:mod:`retrieval.data.readers`): JSON Lines, JSON, CSV / TSV,
Parquet, Arrow, the metadata file of a Hugging Face image folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retrieval.data.caption_json import split_matches
from retrieval.data.images import TAR_PREFIX
from retrieval.data.records import Collector
from retrieval.data.refs import is_row_ref

__all__ = ["ImageResolver", "ReadOptions", "add_rows", "pick_columns"]

# Columns tried, in order, when the default image / caption column is absent.
IMAGE_COLUMN_FALLBACKS = ("file_name", "filepath", "image_path", "path", "img")
CAPTION_COLUMN_FALLBACKS = ("captions", "text", "txt", "sentences")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How a source is read (the keyword arguments of :func:`read_corpus`)."""

    image_column: str = "image"  # column / field with the image (path, bytes, {bytes, path})
    caption_column: str = "caption"  # column / field with the caption(s)
    id_column: str | None = None  # column / field naming the image (default: its path)
    split: str | None = None  # rows whose `split` is one of these (comma-separated), or <split>/ in a folder
    image_root: str | None = None  # folder relative image paths start from (default: the manifest's)

    def replace(self, **changes: Any) -> ReadOptions:
        return dataclasses.replace(self, **changes)


def pick_columns(
    names: list[str],
    options: ReadOptions,
    where: Path,
    out: Collector,
    bytes_columns: Iterable[str] = (),
    strict: bool = True,
) -> tuple[str | None, str | None]:
    """The image and caption columns of a manifest or table with these column names (``None``:
    absent), falling back to usual names when the default is absent (noted in ``out``). With neither,
    a ``ValueError``; unless not ``strict`` (JSON rows, chosen from the first row, may differ), which
    gives the asked-for names and lets each row be checked."""
    defaults = ReadOptions()

    def pick(wanted: str, default: str, fallbacks: tuple[str, ...], what: str) -> str | None:
        if wanted in names:
            return wanted
        if wanted != default:
            return None
        found = next((c for c in fallbacks if c in names), None)
        if found is not None:
            flag = "--image-column" if what == "images" else "--caption-column"
            out.note(
                f"{where} has no {wanted!r} column: its {what} are read from {found!r} ({flag} names another)"
            )
        return found

    byte_columns = list(bytes_columns)
    image_fallbacks = IMAGE_COLUMN_FALLBACKS + (tuple(byte_columns) if len(byte_columns) == 1 else ())
    image = pick(options.image_column, defaults.image_column, image_fallbacks, "images")
    caption = pick(options.caption_column, defaults.caption_column, CAPTION_COLUMN_FALLBACKS, "captions")
    if image is None and caption is None:
        if not strict:
            return options.image_column, options.caption_column
        raise ValueError(
            f"{where} has no column(s) {[options.image_column, options.caption_column]}; its columns are "
            f"{names}: pass --image-column / --caption-column (image_column= / caption_column=) naming yours"
        )
    if image is None:
        out.note(
            f"{where} has no column {options.image_column!r}: its rows are captions alone (--image-column names the image column)"
        )
    if caption is None:
        out.note(
            f"{where} has no column {options.caption_column!r}: its rows are images alone (--caption-column names the caption column)"
        )
    if options.id_column and options.id_column not in names:
        raise ValueError(
            f"{where} has no column {options.id_column!r}; its columns are {names}: pass --id-column "
            "(id_column=) naming yours, or leave it out to use the image path"
        )
    return image, caption


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


class ImageResolver:
    """Image column value -> absolute path string, the same as ``str(Path(v))`` for absolute paths
    and ``str((base / v).resolve())`` for relative ones, at a fraction of the cost per row;
    references (``tar://``, ``parquet://``, ``arrow://``) and URLs are kept as they are.

    Building ``Path`` objects and resolving every row dominates reading a large manifest, so
    absolute paths already in normal form are kept as they are, and a relative path resolves its
    folder once per distinct folder (cached) and then checks only whether the file itself is a
    symbolic link (one ``lstat``)."""

    def __init__(self, base: Path) -> None:
        self.base = str(base)
        self.folders: dict[str, str] = {}

    def __call__(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return None
        value = value.strip()
        if value.startswith(TAR_PREFIX) or is_row_ref(value) or value.startswith(("http://", "https://")):
            return value
        if value.startswith("~"):
            value = os.path.expanduser(value)
        if os.sep != "/":  # the shortcuts below assume POSIX paths
            path = Path(value)
            return str(path if path.is_absolute() else (Path(self.base) / path).resolve())
        if value.startswith("/"):
            if "//" in value or "/./" in value or value.endswith(("/", "/.")):
                return str(Path(value))  # pathlib's normal form: no repeated separators or "." parts
            return value
        folder, _, name = value.rpartition("/")
        if name in ("", ".", ".."):
            return str((Path(self.base) / value).resolve())
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = os.path.realpath(os.path.join(self.base, folder))
        path = os.path.join(real, name)
        return os.path.realpath(path) if os.path.islink(path) else path


def add_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    path: Path,
    out: Collector,
    options: ReadOptions,
    picked: list[tuple[str | None, str | None]],
) -> None:
    """Add manifest / table rows to ``out``: each row gives a pair per caption, an image alone, or
    captions alone; rows with neither field are skipped (all of them: a ``ValueError``). ``picked``
    holds the ``(image, caption)`` columns once known (a header sets them; else the first row)."""
    base = Path(options.image_root).expanduser().resolve() if options.image_root else path.parent.resolve()
    resolve = ImageResolver(base)
    count = lacking = 0
    first_keys: list[str] = []
    split_seen = False
    for where, row in rows:
        count += 1
        if not picked:  # JSON rows: the columns are chosen from the first row
            picked.append(pick_columns(sorted(row), options, path, out, strict=False))
        image_column, caption_column = picked[0]
        if options.split is not None and "split" in row:
            split_seen = True
            if not split_matches(row["split"], options.split):
                continue
        has_image = image_column is not None and image_column in row
        has_caption = caption_column is not None and caption_column in row
        if not has_image and not has_caption:
            lacking += 1
            first_keys = first_keys or sorted(row)
            out.skip(
                where,
                f"no {options.image_column!r} or {options.caption_column!r} field: the row has {sorted(row)}; "
                "pass --image-column / --caption-column (image_column= / caption_column=)",
            )
            continue
        image_id = row.get(options.id_column) if options.id_column else None
        if options.id_column and image_id in (None, ""):
            out.skip(where, f"no {options.id_column!r} value")
            continue
        image = None
        no_image: str | None = f"no image: no {image_column or options.image_column!r} field"
        if has_image:
            image = resolve(row[image_column])
            no_image = None
            if image is None:
                out.skip(where, f"no image: {image_column!r} is empty or not a string", "image")
            elif image.startswith(("http://", "https://")):
                out.skip(
                    where,
                    "remote image URL: images are not downloaded; fetch them first (e.g. img2dataset)",
                    "image",
                )
                image = None
        metadata = {k: _jsonable(v) for k, v in row.items() if k not in (image_column, caption_column)}
        out.add(
            where, image, row.get(caption_column) if has_caption else None, image_id, metadata,
            no_caption=f"no caption: no {caption_column or options.caption_column!r} field", no_image=no_image,
        )  # fmt: skip
    if count and lacking == count:
        raise ValueError(
            f"no row of {path} has an {options.image_column!r} or a {options.caption_column!r} field (the "
            f"first has {first_keys}): pass --image-column / --caption-column (image_column= / caption_column=) "
            "naming yours"
        )
    if options.split is not None and count and not split_seen:
        out.note(
            f"no row of {path} has a 'split' field: every row was kept (--split {options.split} ignored)"
        )
