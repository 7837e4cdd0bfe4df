"""On-disk plumbing of a collection: the manifest (commit point), fsync, the writer lock, old data folders.

A save writes a new data folder, fsyncs its files and the folder, then replaces
``manifest.json`` atomically (temp file, fsync, ``os.replace``, fsync of the directory).
Until that rename the previous manifest names the previous, untouched folder; after it,
the new one. Old folders are deleted only after the commit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms: no inter-process writer lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DATA_RE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "CollectionBusyError",
    "fsync_dir",
    "lock",
    "read_manifest",
    "remove_folder",
    "unlock",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FORMAT = "indexes.collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".writer.lock"
DATA_RE = re.compile(r"^v\d{6}-[0-9a-f]{8}$")  # data folder names: v<version>-<random>


class CollectionBusyError(RuntimeError):
    """Another writable handle (in this or another process) holds the collection."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable (a no-op where directories cannot be opened)."""
    if os.name == "nt":  # pragma: no cover - Windows cannot fsync a directory handle
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``path/manifest.json``: the commit point of every save."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    tmp = path / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path / MANIFEST)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the collection at ``path``; clear errors for anything that is not one we can read."""
    if not path.exists():
        raise FileNotFoundError(
            f"collection {path} does not exist; create it with Collection.create({str(path)!r}, dim)"
        )
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a collection directory")
    file = path / MANIFEST
    if not file.exists():
        raise ValueError(
            f"{path} is not a collection (no {MANIFEST}); create one with Collection.create(path, dim)"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); the collection is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not an indexes collection manifest (expected format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"collection {path} has format version {version!r}, this library reads up to {FORMAT_VERSION}: "
            "upgrade the indexes package"
        )
    return manifest


def lock(path: Path) -> int | None:
    """Take the collection's writer lock (non-blocking flock); returns the descriptor to :func:`unlock`."""
    if fcntl is None or not path.is_dir():
        return None
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CollectionBusyError(
            f"collection {path} is already open for writing (in this or another process): close that "
            "handle first, or open with read_only=True"
        ) from None
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def remove_folder(folder: Path) -> None:
    """Delete an unused data folder; failures are logged (the folder is garbage, not data)."""
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        logger.warning(
            "could not delete old collection data %s (%s); it is unused and safe to delete", folder, exc
        )
