"""Server file paths stay on the server: metadata and error messages are shown without them.

Collections built from files record where each file was (``path``, ``image_id``, ``tar://`` shard
references), usually as absolute paths that tell a client the server's user names and folder
layout. Unless the operator asks for them (``ServeConfig.show_paths``), every metadata string that
is such a path is shown relative to the collection's media root when it lies inside it (what the
page needs to name a file), else as its file name; error messages get the same treatment.

A string counts as a server path when it is a ``tar://``, ``file://``, ``parquet://`` or ``arrow://``
reference (the last two name image bytes in a row of a table file), or an absolute
path whose first folder exists at the root of this machine (``/home/...``, ``/data/...``): a
caption that happens to start with a slash ("/r/aww") is left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["PathScrubber"]

_TAR = "tar://"
_FILE = "file://"
_ROWS = ("parquet://", "arrow://")  # image bytes in a row of a table file: retrieval.data.refs
# An absolute path inside a message: after a space, quote, bracket or the start; up to a quote or space.
_IN_TEXT = re.compile(r"""(?<![\w/:.~-])(?:tar://|file://|parquet://|arrow://)?/[^\s'"`<>()\[\]{},;]+""")


def _root_names() -> frozenset[str]:
    try:
        return frozenset(os.listdir(os.sep))
    except OSError:
        return frozenset()


class PathScrubber:
    """Rewrites server paths in metadata and messages (module docstring); ``show=True`` keeps them."""

    def __init__(self, show: bool = False, extra_roots: Iterable[str] = ()) -> None:
        self.show = show
        self._root_names = _root_names()
        # folders whose paths are always server paths (collections, models, media roots)
        roots = {os.path.abspath(r) for r in extra_roots if r and "://" not in r}
        self._known = tuple(sorted(roots, key=len, reverse=True))

    def is_server_path(self, text: str) -> bool:
        if text.startswith((_TAR, _FILE, *_ROWS)):
            return True
        if not text.startswith("/") or "\n" in text or len(text) > 4096:
            return False
        first = text.lstrip("/").split("/", 1)[0]
        return first in self._root_names or any(text.startswith(k) for k in self._known)

    def value(self, text: str, media_root: Path | None) -> str:
        """``text`` as a client may see it."""
        if self.show or not self.is_server_path(text):
            return text
        member = ""
        target = text
        if text.startswith(_TAR):
            target, sep, member = text[len(_TAR) :].partition("#")
            member = sep + member
        elif text.startswith(_ROWS):  # kind://FILE#column/row: the file is shown as any path is
            kind, _, body = text.partition("://")
            target, sep, member = body.rpartition("#")
            if not sep:
                target, member = body, ""
            member = f"{sep}{member}"
            return f"{kind}://{_shown(target, media_root)}{member}"
        elif text.startswith(_FILE):
            target = unquote(urlsplit(text).path)
        return _shown(target, media_root) + member

    def metadata(self, metadata: dict[str, Any], media_root: Path | None) -> dict[str, Any]:
        if self.show:
            return metadata
        return {k: self._any(v, media_root) for k, v in metadata.items()}

    def _any(self, value: Any, media_root: Path | None) -> Any:
        if isinstance(value, str):
            return self.value(value, media_root)
        if isinstance(value, list):
            return [self._any(v, media_root) for v in value]
        if isinstance(value, dict):
            return {k: self._any(v, media_root) for k, v in value.items()}
        return value

    def message(self, text: str) -> str:
        """An error message with every server path in it reduced to a file name."""
        if self.show:
            return text
        return _IN_TEXT.sub(
            lambda m: self.value(m.group(0), None) if self.is_server_path(m.group(0)) else m.group(0), text
        )


def _shown(path: str, media_root: Path | None) -> str:
    """``path`` relative to ``media_root`` when inside it, else its file name."""
    if media_root is not None:
        root = str(media_root)
        for candidate in (os.path.normpath(path), _real(path)):
            if candidate and candidate.startswith(root.rstrip(os.sep) + os.sep):
                return PurePosixPath(*Path(candidate).relative_to(root).parts).as_posix()
    return os.path.basename(os.path.normpath(path)) or "<server path>"


def _real(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte, a loop
        return None
