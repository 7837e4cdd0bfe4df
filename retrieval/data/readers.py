"""Read image-caption pairs from the formats users already have.

* manifests: JSON Lines (``.jsonl``), ``.csv`` / ``.tsv`` and ``.parquet`` with configurable
  image / caption / id columns; relative image paths are relative to the manifest;
* an image folder with a same-name sidecar ``.txt`` caption file (and optional ``.json``
  metadata), as img2dataset and clip-retrieval write them;
* webdataset ``.tar`` shards (a shard, a folder of shards or a glob), whose images are
  referenced as ``"tar://<abs shard path>#<member name>"``.

Several captions per image are first-class: several rows with the same image, a list of
captions in one row (JSON / Parquet list, or a JSON list string in CSV), or one caption per
line of a sidecar ``.txt``. Rows that cannot be used (empty caption, missing column, bad JSON,
bytes that are not UTF-8, a CSV field over the ``csv`` module's size limit) are skipped and listed in :attr:`PairSet.skipped` with where and why; nothing is dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data.images import TAR_PREFIX, tar_ref
from retrieval.data.manifests import csv_rows, json_rows, jsonl_rows, parquet_rows

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image-caption pair. ``image`` is an absolute path or a ``tar://`` reference."""

    image: str
    caption: str
    image_id: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass
class PairSet:
    """Pairs read from a source, plus what was skipped as ``(where, reason)``."""

    pairs: list[Pair]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        return self.pairs[index]

    def skip_counts(self) -> collections.Counter[str]:
        """How many records were skipped for each reason."""
        return collections.Counter(reason for _, reason in self.skipped)

    def images(self) -> list[str]:
        """Unique image references in first-seen order (one per ``image_id``)."""
        seen: dict[str, str] = {}
        for pair in self.pairs:
            seen.setdefault(pair.image_id, pair.image)
        return list(seen.values())

    def image_ids(self) -> list[str]:
        """Unique image ids, aligned with :meth:`images`."""
        return list(dict.fromkeys(pair.image_id for pair in self.pairs))

    def captions(self) -> list[str]:
        """Every caption, one per pair (aligned with :meth:`text_to_image`)."""
        return [pair.caption for pair in self.pairs]

    def text_to_image(self) -> np.ndarray:
        """``[n_pairs]`` int64: caption ``i`` belongs to image ``images()[result[i]]``."""
        index = {image_id: i for i, image_id in enumerate(self.image_ids())}
        return np.asarray([index[pair.image_id] for pair in self.pairs], dtype=np.int64)


class _Collector:
    """Accumulates pairs and skips with the same rules for every format."""

    def __init__(self) -> None:
        self.pairs: list[Pair] = []
        self.skipped: list[tuple[str, str]] = []

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def add(self, where: str, image: str, captions: Any, image_id: Any, metadata: dict[str, Any]) -> None:
        texts = _caption_list(captions)
        if texts is None:
            self.skip(
                where, f"caption is a {type(captions).__name__}, expected a string or a list of strings"
            )
            return
        if not texts:
            self.skip(where, "no caption")
            return
        key = str(image_id) if image_id not in (None, "") else image
        for n, text in enumerate(texts):
            text = text.strip() if isinstance(text, str) else text
            if not isinstance(text, str):
                self.skip(f"{where} caption {n}", f"caption is a {type(text).__name__}, expected a string")
            elif not text:
                self.skip(f"{where} caption {n}" if len(texts) > 1 else where, "empty caption")
            else:
                self.pairs.append(Pair(image=image, caption=text, image_id=key, metadata=dict(metadata)))

    def result(self) -> PairSet:
        return PairSet(self.pairs, self.skipped)


def _caption_list(value: Any) -> list[Any] | None:
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                return [value]
            if isinstance(parsed, list):
                return parsed
        return [value]
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return list(value.tolist() if hasattr(value, "tolist") else value)
    return None


class _ImageResolver:
    """Image column value -> absolute path string, the same as ``str(Path(v))`` for absolute paths
    and ``str((base / v).resolve())`` for relative ones, at a fraction of the cost per row.

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
        if value.startswith(TAR_PREFIX):
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


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _add_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    base: Path,
    out: _Collector,
    image_column: str,
    caption_column: str,
    id_column: str | None,
    split: str | None,
) -> int:
    count = 0
    lacking = 0
    first_keys: list[str] = []
    resolve = _ImageResolver(base)
    for where, row in rows:
        count += 1
        if split is not None and "split" in row and str(row["split"]) != split:
            continue
        missing = [c for c in (image_column, caption_column) if c not in row]
        if missing:
            lacking += 1
            first_keys = first_keys or sorted(row)
            out.skip(where, f"no {missing} field (found {sorted(row)}); pass image_column=/caption_column=")
            continue
        image = resolve(row[image_column])
        if image is None:
            out.skip(where, f"{image_column!r} is empty or not a string")
            continue
        if image.startswith(("http://", "https://")):
            out.skip(where, "remote image URLs are not fetched; download the images first (e.g. img2dataset)")
            continue
        image_id = row.get(id_column) if id_column else None
        if id_column and image_id in (None, ""):
            out.skip(where, f"no {id_column!r} value")
            continue
        metadata = {k: _jsonable(v) for k, v in row.items() if k not in (image_column, caption_column)}
        out.add(where, image, row[caption_column], image_id, metadata)
    if count and lacking == count:
        raise ValueError(
            f"no row has both {image_column!r} and {caption_column!r} fields (the first has {first_keys}): "
            "pass image_column= / caption_column= naming yours"
        )
    return count


def _read_manifest(
    path: Path,
    out: _Collector,
    image_column: str,
    caption_column: str,
    id_column: str | None,
    split: str | None,
) -> None:
    suffix = path.suffix.lower()
    columns = tuple(c for c in (image_column, caption_column, id_column) if c)
    if suffix == ".jsonl":
        rows: Iterable[tuple[str, dict[str, Any]]] = jsonl_rows(path, out.skip)
    elif suffix == ".json":
        rows = json_rows(path, out.skip)
    elif suffix in (".csv", ".tsv"):
        rows = csv_rows(path, columns, out.skip)
    else:
        rows = parquet_rows(path, columns)
    _add_rows(rows, path.parent.resolve(), out, image_column, caption_column, id_column, split)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _read_folder(root: Path, out: _Collector, caption_column: str, id_column: str | None) -> None:
    images = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # ._a.jpg, .cache/, ...
        and p.is_file()
    )
    for image in images:
        where = str(image)
        metadata: dict[str, Any] = {}
        sidecar_json = image.with_suffix(".json")
        if sidecar_json.is_file():
            try:
                loaded = json.loads(_read_text(sidecar_json))
                metadata = loaded if isinstance(loaded, dict) else {"json": loaded}
            except json.JSONDecodeError as exc:
                out.skip(str(sidecar_json), f"invalid JSON metadata ignored: {exc.msg}")
            except RecursionError:
                out.skip(str(sidecar_json), "JSON metadata nested too deeply, ignored")
        sidecar_txt = image.with_suffix(".txt")
        if sidecar_txt.is_file():
            captions: Any = _read_text(sidecar_txt).splitlines()
            if not any(c.strip() for c in captions):
                captions = [""]
        elif caption_column in metadata:
            captions = metadata[caption_column]
        else:
            out.skip(where, f"no caption: expected {sidecar_txt.name} beside the image")
            continue
        image_id = metadata.get(id_column) if id_column else None
        metadata = {k: _jsonable(v) for k, v in metadata.items() if k != caption_column}
        metadata.setdefault("path", str(image.relative_to(root)))
        out.add(where, str(image.resolve()), captions, image_id, metadata)


def _split_member(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    folder, _, filename = name.rpartition("/")
    stem, _, ext = filename.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _read_shard(shard: Path, out: _Collector, caption_column: str, id_column: str | None) -> None:
    groups: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard, "r") as tar:
            shard_size = shard.stat().st_size
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > shard_size:
                    out.skip(f"{shard}#{member.name}", "truncated tar shard: this member is cut off")
                    break
                key, ext = _split_member(member.name)
                group = groups.setdefault(key, {})
                if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                    group["image"] = member.name
                elif ext in ("txt", "json"):
                    fh = tar.extractfile(member)
                    group[ext] = fh.read().decode("utf-8", errors="replace") if fh else ""
    except (OSError, tarfile.TarError) as exc:
        out.skip(str(shard), f"unreadable tar shard after {len(groups)} samples: {exc}")  # keep what was read
    for key, group in groups.items():
        where = f"{shard}#{key}"
        if "image" not in group:
            out.skip(where, "no image member in this sample")
            continue
        metadata: dict[str, Any] = {}
        if "json" in group:
            try:
                loaded = json.loads(group["json"])
                metadata = loaded if isinstance(loaded, dict) else {"json": loaded}
            except json.JSONDecodeError as exc:
                out.skip(where, f"invalid JSON metadata ignored: {exc.msg}")
            except RecursionError:
                out.skip(where, "JSON metadata nested too deeply, ignored")
        if "txt" in group:
            captions: Any = group["txt"].splitlines() or [""]
        elif caption_column in metadata:
            captions = metadata[caption_column]
        else:
            out.skip(where, "no caption: expected a .txt member")
            continue
        image_id = metadata.get(id_column) if id_column else None
        metadata = {k: _jsonable(v) for k, v in metadata.items() if k != caption_column}
        metadata.setdefault("key", key)
        out.add(where, tar_ref(shard, group["image"]), captions, image_id, metadata)


def read_pairs(
    source: str | os.PathLike[str],
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    split: str | None = None,
) -> PairSet:
    """Read image-caption pairs from a manifest, an image folder, or webdataset shards.

    ``source`` is a ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.parquet`` manifest, a ``.tar`` shard,
    a glob of shards (``"data/{0..9}.tar"`` is not expanded; use ``"data/*.tar"``), a folder of
    shards, or an image folder with sidecar ``.txt`` captions. ``image_id`` defaults to the image
    reference; ``id_column`` names a column (or a sidecar JSON field) to use instead. ``split``
    keeps rows whose ``split`` field equals it; for a folder holding ``<split>.jsonl`` (or another
    manifest type) that manifest is read. Unusable rows are in ``PairSet.skipped``.
    """
    text = os.fspath(source)
    out = _Collector()
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        shards = sorted(glob.glob(text))
        if not shards:
            raise FileNotFoundError(f"no files match {text!r}: check the pattern")
        for shard in shards:
            _read_one(Path(shard), out, image_column, caption_column, id_column, split)
        return out.result()
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: expected a manifest, an image folder or .tar shards")
    if path.is_dir() and split is not None:
        for ext in MANIFEST_EXTENSIONS:
            candidate = path / f"{split}{ext}"
            if candidate.is_file():
                _read_one(candidate, out, image_column, caption_column, id_column, None)
                return out.result()
    _read_one(path, out, image_column, caption_column, id_column, split)
    return out.result()


def _read_one(
    path: Path,
    out: _Collector,
    image_column: str,
    caption_column: str,
    id_column: str | None,
    split: str | None,
) -> None:
    suffix = path.suffix.lower()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
        if shards and not has_images:
            for shard in shards:
                _read_shard(shard, out, caption_column, id_column)
        else:
            _read_folder(path, out, caption_column, id_column)
    elif suffix in MANIFEST_EXTENSIONS:
        _read_manifest(path, out, image_column, caption_column, id_column, split)
    elif suffix == ".tar":
        _read_shard(path, out, caption_column, id_column)
    else:
        raise ValueError(
            f"cannot read pairs from {path}: expected one of {list(MANIFEST_EXTENSIONS)}, a .tar shard, "
            "a folder of shards or an image folder with sidecar .txt captions"
        )
