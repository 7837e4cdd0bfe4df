"""Image folders: every image under a folder, with its captions when it has any.

An image's captions are the lines of a same-name sidecar ``.txt`` (``a.jpg`` -> ``a.txt``), as
img2dataset and clip-retrieval write them, or a field of its same-name ``.json`` sidecar (the caption
column); an image without either is an image alone (embedded, searchable by text, not a training
pair). Hidden files and folders (``.thumbs/``, macOS ``._a.jpg``) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retrieval.data.records import Collector

__all__ = ["IMAGE_EXTENSIONS", "folder_images", "read_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_images(root: Path) -> list[Path]:
    """The image files under ``root`` (recursively, sorted), hidden files and folders left out."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def read_image_folder(root: Path, out: Collector, caption_column: str, id_column: str | None) -> int:
    """Add every image under ``root`` to ``out``; returns how many images were found."""
    images = folder_images(root)
    for image in images:
        where = str(image)
        metadata: dict[str, Any] = {}
        sidecar_json = image.with_suffix(".json")
        if sidecar_json.is_file():
            try:
                loaded = json.loads(sidecar_json.read_text(encoding="utf-8", errors="replace"))
                metadata = loaded if isinstance(loaded, dict) else {"json": loaded}
            except json.JSONDecodeError as exc:
                out.skip(str(sidecar_json), f"invalid JSON metadata ignored: {exc.msg}", "none")
            except RecursionError:
                out.skip(str(sidecar_json), "JSON metadata nested too deeply, ignored", "none")
        sidecar_txt = image.with_suffix(".txt")
        captions: Any = None
        if sidecar_txt.is_file():
            lines = sidecar_txt.read_text(encoding="utf-8", errors="replace").splitlines()
            captions = [line for line in lines if line.strip()] or [
                ""
            ]  # blank lines separate, all blank: empty
        elif caption_column in metadata:
            captions = metadata[caption_column]
        image_id = metadata.get(id_column) if id_column else None
        metadata = {k: _jsonable(v) for k, v in metadata.items() if k != caption_column}
        metadata.setdefault("path", str(image.relative_to(root)))
        out.add(
            where, str(image.resolve()), captions, image_id, metadata,
            no_caption=f"no caption: expected {sidecar_txt.name} beside the image",
        )  # fmt: skip
    return len(images)
