"""Checks a command makes before its work starts, so that a missing collection, model or file is
named in the words of the command line at once, not after a model has loaded for ten seconds.

Each raises ``FileNotFoundError`` (or ``ValueError`` for something that is there but of the wrong
kind) with a message saying what to give instead; none loads a model or opens a collection for
writing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_collection", "require_file", "require_input", "require_model"]

_EMBED = "retrieval embed SOURCE --model MODEL --out {}"
_PATTERN_CHARS = set("*?[{")


def require_collection(location: str, *, flag: str = "COLLECTION", manifest: bool = True) -> None:
    """``location`` holds a collection (a folder with its manifest, or a Milvus collection that the
    server lists). ``manifest=False`` (``retrieval check``) only asks for the folder."""
    from indexes import collection_exists, parse_location

    loc = parse_location(location)
    create = f"create one with `{_EMBED.format(location)}`"
    if loc.is_milvus:
        if not collection_exists(loc):
            raise FileNotFoundError(f"no collection {location} ({flag}): {create}")
        return
    path = Path(os.fspath(loc.path))
    if not path.exists():
        raise FileNotFoundError(f"no collection at {location} ({flag}): the folder does not exist; {create}")
    if not path.is_dir():
        raise ValueError(f"{location} ({flag}) is a file; expected a collection folder: {create}")
    if manifest and not collection_exists(loc):
        raise ValueError(
            f"{location} ({flag}) is a folder but not a collection (no manifest.json): give the folder "
            f"`retrieval embed --out` or `retrieval index --out` wrote, or {create}"
        )


def require_model(name: str, *, flag: str = "--model") -> None:
    """``name`` names a model :func:`retrieval.model.load_model` can load (a folder of the right kind,
    or a hub id that is cached or downloadable), and the packages a toolkit folder refers to are
    installed; nothing is loaded."""
    from retrieval.pretrained import resolve_model

    text = os.fspath(name)
    if not Path(text).expanduser().exists() and _looks_like_path(text):  # not asked of the hub
        raise FileNotFoundError(
            f"no model at {text} ({flag}): give a folder written by `retrieval train` (its best/ or "
            "final/), a transformers CLIP/SigLIP folder, or a Hugging Face hub id org/name[@revision]"
        )
    source = resolve_model(text)  # a hub id that is not cached: the error says what to run
    if source.kind == "toolkit":
        from retrieval.model import read_format_info
        from retrieval.towers import packaged

        for part, reference in (read_format_info(source.path).get("packaged_weights") or {}).items():
            packaged.check_installed(reference, what=part.replace("_", " "), model=text)


def require_input(path: str, what: str, *, flag: str) -> None:
    """A local input (data, shards) exists; patterns (``*``, ``{000..009}``) and URLs are left to
    their readers, which say what they matched."""
    if "://" in path or _PATTERN_CHARS & set(path):
        return
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"no {what} at {path} ({flag}): the path does not exist")


def require_file(path: str, what: str, *, flag: str) -> None:
    """``path`` is an existing file (a query list, a config, an image)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"no {what} at {path} ({flag}): the file does not exist")
    if file.is_dir():
        raise ValueError(f"{path} ({flag}) is a folder; expected a {what} file")


def _looks_like_path(text: str) -> bool:
    """A name that cannot be a hub id ``org/name[@revision]``, or whose first part is a local folder."""
    repo = text.split("@", 1)[0]
    return text.startswith((".", "/", "~")) or repo.count("/") != 1 or Path(repo.split("/")[0]).is_dir()
