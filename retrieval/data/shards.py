"""Webdataset shards: brace patterns, shard folders, clip_benchmark's dataset roots, and the samples
of a ``.tar`` shard.

A sample is the group of members sharing a key (the member path up to the first dot of its file
name, the webdataset convention): an image (``.jpg``, ``.png``, ``.webp``, ...), an optional ``.txt``
(one caption per line), ``.json`` metadata and ``.cls`` (a class index, named by the root's
``classnames.txt`` when there is one). Images are referenced as ``tar://<shard>#<member>``.

Patterns expand as webdataset expands them: ``shards/{000..009}.tar`` (a numeric range, zero-padded
to the width of its bounds), ``{a,b}`` (alternatives), nested and several per pattern, then shell
globs (``*``, ``?``, ``[...]``).

clip_benchmark writes a dataset as ``ROOT/<split>/0.tar ... N-1.tar`` with ``ROOT/<split>/nshards.txt``
(the count), and ``ROOT/classnames.txt`` / ``ROOT/dataset_type.txt`` beside them; ``--split`` picks
the folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from retrieval.data.images import tar_ref
from retrieval.data.records import Collector

__all__ = ["expand_braces", "natural_key", "read_shard", "shard_split_folder", "shards_of_pattern"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_EXPANSION = 1_000_000  # names a brace pattern may expand to
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?$")


def natural_key(name: str) -> list[Any]:
    """Sort key putting ``2.tar`` before ``10.tar``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _outer_brace(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the first top-level ``{...}`` group, ``None`` when there is none."""
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                return start, i
    return None


def _split_top(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    parts.append(body[last:])
    return parts


def _range(body: str) -> list[str] | None:
    match = _RANGE.match(body)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    step = int(match.group(3) or 1) or 1
    width = max(len(match.group(1)), len(match.group(2)))
    padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in match.group(1, 2))
    if abs(last - first) // step + 1 > MAX_EXPANSION:
        raise ValueError(f"the range {{{body}}} names more than {MAX_EXPANSION} files")
    values = range(first, last + 1, step) if last >= first else range(first, last - 1, -step)
    return [str(v).zfill(width) if padded else str(v) for v in values]


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: ``"a{1..3}"`` -> ``a1 a2 a3``,
    ``"{x,y}.tar"`` -> ``x.tar y.tar``, ``"{000..002}"`` -> ``000 001 002``. Braces that are not a
    range or a list of alternatives stay as they are."""
    found = _outer_brace(pattern)
    if found is None:
        return [pattern]
    start, end = found
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    options = _range(body)
    if options is None:
        parts = _split_top(body)
        if len(parts) < 2:  # "{x}": not a pattern
            return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
        options = [name for part in parts for name in expand_braces(part)]
    tails = expand_braces(tail)
    if len(options) * len(tails) > MAX_EXPANSION:
        raise ValueError(f"{pattern!r} names more than {MAX_EXPANSION} files")
    return [head + option + rest for option in options for rest in tails]


def is_pattern(text: str) -> bool:
    """Whether ``text`` holds a brace group or a glob character."""
    return any(ch in text for ch in "*?[") or _outer_brace(text) is not None


def shards_of_pattern(pattern: str) -> list[Path]:
    """The existing files a brace / glob pattern names, in pattern order (globs sorted naturally).
    ``FileNotFoundError`` lists the names that do not exist when none does, or when a brace
    pattern names files that are missing (webdataset would fail on them mid-epoch)."""
    names = expand_braces(os.path.expanduser(pattern))
    found: list[Path] = []
    missing: list[str] = []
    for name in names:
        if any(ch in name for ch in "*?["):
            matches = sorted(glob.glob(name), key=natural_key)
            found += [Path(m) for m in matches]
            if not matches and not os.path.exists(name):
                missing.append(name)
        elif os.path.exists(name):
            found.append(Path(name))
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        what = "no files match" if not found else f"{len(missing)} of the {len(names)} names do not exist:"
        raise FileNotFoundError(f"{what} {pattern!r} ({shown}): check the pattern")
    return found


def shard_split_folder(root: Path, split: str | None) -> Path | None:
    """The folder of ``split`` in a clip_benchmark-style root (``ROOT/<split>/*.tar``), ``None``
    when ``root`` is not one. Without ``split``, a root with a single split folder gives it, and a
    root with several raises ``ValueError`` naming them."""
    splits = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.tar"))
    )
    if not splits:
        return None
    if split is None:
        if len(splits) == 1 and not any(root.glob("*.tar")):
            return root / splits[0]
        if any(root.glob("*.tar")):
            return None
        raise ValueError(
            f"{root} is a webdataset root with the splits {splits}: name one with --split (split=)"
        )
    if split in splits:
        return root / split
    raise ValueError(f"{root} has no split {split!r}; its splits are {splits}: pass one of them to --split")


def split_shards(folder: Path) -> list[Path]:
    """The shards of a split folder: ``0.tar ... N-1.tar`` when ``nshards.txt`` says N (all must
    exist), else every ``*.tar`` in natural order."""
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        text = count_file.read_text(encoding="utf-8", errors="replace").strip()
        if not text.isdigit():
            raise ValueError(f"{count_file} should hold the number of shards; it holds {text[:40]!r}")
        n = int(text)
        shards = [folder / f"{i}.tar" for i in range(n)]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{count_file} says {n} shards but {len(missing)} are missing ({', '.join(missing[:3])}): "
                "finish the download, or fix nshards.txt"
            )
        return shards
    return sorted(folder.glob("*.tar"), key=lambda p: natural_key(p.name))


def class_names(root: Path) -> list[str] | None:
    """The lines of ``classnames.txt`` in ``root`` or its parent (clip_benchmark), if any."""
    for folder in (root, root.parent):
        path = folder / "classnames.txt"
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return None


def _split_member(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    folder, _, filename = name.rpartition("/")
    stem, _, ext = filename.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _json_metadata(text: str, where: str, out: Collector) -> dict[str, Any]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        out.skip(where, f"invalid JSON metadata ignored: {exc.msg}", "none")
        return {}
    except RecursionError:
        out.skip(where, "JSON metadata nested too deeply, ignored", "none")
        return {}
    return loaded if isinstance(loaded, dict) else {"json": loaded}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def read_shard(
    shard: Path,
    out: Collector,
    caption_column: str,
    id_column: str | None,
    classes: list[str] | None = None,
) -> None:
    """Add the samples of one ``.tar`` shard to ``out``; a truncated or unreadable shard keeps the
    samples read before the damage."""
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
                elif ext in ("txt", "json", "cls"):
                    fh = tar.extractfile(member)
                    group[ext] = fh.read(1 << 20).decode("utf-8", errors="replace") if fh else ""
    except (OSError, tarfile.TarError) as exc:
        out.skip(str(shard), f"unreadable tar shard: {exc} (after {len(groups)} samples, which are kept)")
    for key, group in groups.items():
        where = f"{shard}#{key}"
        metadata = _json_metadata(group["json"], where, out) if "json" in group else {}
        if "cls" in group:
            label = group["cls"].strip()
            index = int(label) if label.isdigit() else None
            metadata.setdefault(
                "label", classes[index] if classes and index is not None and index < len(classes) else label
            )
        captions: Any = None
        if "txt" in group:
            captions = [line for line in group["txt"].splitlines() if line.strip()] or [""]
        elif caption_column in metadata:
            captions = metadata[caption_column]
        image_id = metadata.get(id_column) if id_column else None
        metadata = {k: _jsonable(v) for k, v in metadata.items() if k != caption_column}
        metadata.setdefault("key", key)
        if "image" not in group:
            if captions is None:
                out.skip(where, "no image member in this sample")
            else:
                out.add(where, None, captions, image_id, metadata, no_image="no image member in this sample")
            continue
        out.add(
            where, tar_ref(shard, group["image"]), captions, image_id, metadata,
            no_caption="no caption: expected a .txt member",
        )  # fmt: skip
