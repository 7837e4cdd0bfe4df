"""The caption files of the retrieval benchmarks: the Karpathy split JSON and COCO captions JSON.

* Karpathy split (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_flickr8k.json``, as
  Karpathy & Fei-Fei 2015 published them): ``{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw", "tokens"}], "cocoid" | "imgid", ...}]}``. An image's file is
  ``IMAGE_ROOT/filepath/filename`` (COCO: ``val2014/COCO_val2014_....jpg``) or
  ``IMAGE_ROOT/filename`` (Flickr). ``split`` is ``train``, ``val``, ``test`` or ``restval``;
  ``--split`` keeps one, or several separated by commas (``train,restval``).
* COCO captions (``annotations/captions_val2017.json``): ``{"images": [{"id", "file_name"}],
  "annotations": [{"image_id", "caption"}]}``; an image's file is ``IMAGE_ROOT/file_name``. Images
  without a caption (``image_info_test2017.json``) are images alone. The split is the file itself.

Both are told apart from other JSON by their content (:func:`benchmark_kind`). The image id is the
image's path, as for every other reader (``--id-column cocoid`` / ``imgid`` / ``id`` names theirs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrieval.data.records import Collector

__all__ = ["benchmark_kind", "read_coco", "read_karpathy", "split_matches"]

Resolve = Callable[[Any], "str | None"]


def benchmark_kind(data: Any) -> str | None:
    """``"karpathy"``, ``"coco"`` or ``None`` for a parsed JSON document."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return None
    if isinstance(data.get("annotations"), list):
        return "coco"
    first = next((entry for entry in data["images"] if isinstance(entry, dict)), None)
    if first is not None and "filename" in first and ("sentences" in first or "split" in first):
        return "karpathy"
    return None


def split_matches(value: Any, split: str | None) -> bool:
    """Whether a row's ``split`` value is one of ``split`` (comma-separated); ``None`` keeps all."""
    if split is None:
        return True
    return str(value) in {s.strip() for s in split.split(",")}


def _scalar_fields(entry: dict[str, Any], leave: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in leave and isinstance(v, (str, int, float, bool))}


def _sentence(sentence: Any) -> Any:
    if isinstance(sentence, dict):
        if isinstance(sentence.get("raw"), str):
            return sentence["raw"]
        tokens = sentence.get("tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return " ".join(tokens)
        return None
    return sentence


def read_karpathy(
    data: dict[str, Any],
    path: Path,
    out: Collector,
    resolve: Resolve,
    split: str | None,
    id_column: str | None,
) -> list[str]:
    """Add the images of a Karpathy split JSON; returns the first image paths (to check the root)."""
    first: list[str] = []
    for n, entry in enumerate(data["images"]):
        where = f"{path}:image {n}"
        if not isinstance(entry, dict):
            out.skip(where, f"expected a JSON object, found {type(entry).__name__}")
            continue
        if not split_matches(entry.get("split"), split):
            continue
        name = entry.get("filename")
        if not isinstance(name, str) or not name.strip():
            out.skip(where, "no 'filename' field", "image")
            image = None
        else:
            folder = entry.get("filepath")
            image = resolve(f"{folder}/{name}" if isinstance(folder, str) and folder else name)
            if image is not None and len(first) < 3:
                first.append(image)
        sentences = entry.get("sentences")
        captions = [_sentence(s) for s in sentences] if isinstance(sentences, list) else sentences
        metadata = _scalar_fields(entry, ("sentences", "sentids"))
        out.add(
            where, image, captions, entry.get(id_column) if id_column else None, metadata,
            no_caption="no caption: the image has no 'sentences'", no_image=None,
        )  # fmt: skip
    return first


def read_coco(
    data: dict[str, Any], path: Path, out: Collector, resolve: Resolve, id_column: str | None
) -> list[str]:
    """Add the images of a COCO captions JSON with their captions; returns the first image paths."""
    captions: dict[Any, list[Any]] = {}
    for n, note in enumerate(data["annotations"]):
        if not isinstance(note, dict) or "image_id" not in note:
            out.skip(f"{path}:annotation {n}", "expected an object with 'image_id' and 'caption'", "text")
            continue
        captions.setdefault(note["image_id"], []).append(note.get("caption"))
    first: list[str] = []
    seen: set[Any] = set()
    for n, entry in enumerate(data["images"]):
        where = f"{path}:image {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            out.skip(where, "expected an object with 'id' and 'file_name'", "image")
            continue
        image = resolve(entry["file_name"])
        if image is not None and len(first) < 3:
            first.append(image)
        seen.add(entry.get("id"))
        metadata = {"coco_id" if k == "id" else k: v for k, v in _scalar_fields(entry, ()).items()}
        out.add(
            where, image, captions.get(entry.get("id")), entry.get(id_column) if id_column else None, metadata,
            no_caption="no caption: no annotation names this image", no_image=None,
        )  # fmt: skip
    orphans = sum(len(texts) for image_id, texts in captions.items() if image_id not in seen)
    if orphans:
        out.skip(
            str(path), f"captions of unknown images: {orphans} annotations name no image of the file", "text"
        )
    return first


def load_document(path: Path) -> Any:
    """A JSON document; ``ValueError`` saying what is wrong with it."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or use JSON Lines"
        ) from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        problem = "is not UTF-8" if isinstance(exc, UnicodeDecodeError) else "nests too deeply"
        raise ValueError(
            f"{path} {problem}; fix it, or use JSON Lines (a bad line is skipped there, not fatal)"
        ) from exc
