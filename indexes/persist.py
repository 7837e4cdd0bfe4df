"""On-disk plumbing of a collection: the manifest (the commit point), the writer lock, garbage collection.

A save writes new files only (segments, index and deletion records), fsyncs them and their
folders, then replaces ``manifest.json`` atomically (temp file, fsync, ``os.replace``, fsync of
the directory). Until that rename the previous manifest names only files that are untouched;
after it, the new ones. Files no manifest names are deleted only after a durable commit, and
only by the writer (:func:`collect_garbage`): readers of an older version keep their open
files (POSIX keeps unlinked files readable while they are open or mapped).

Every file a version writes carries its generation in its name (``s000012-...``, ``t000012-...``,
``deleted-000012-...``): the version that commits it, or the next one. After a durable commit the
writer also records the version in ``.committed``. A manifest older than files it does not name
(it was replaced by an older copy: a restore of one file, a sync race) is told apart from what a
crashed writer left behind by :func:`newer_files`, so nothing a newer version may name is deleted
and no id is handed out twice.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from indexes import files

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms: no inter-process writer lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "COMMITTED",
    "DATA_RE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "CollectionBusyError",
    "collect_garbage",
    "describe_newer",
    "fsync_dir",
    "lock",
    "newer_files",
    "read_committed",
    "read_manifest",
    "remove_file",
    "remove_folder",
    "unlock",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FORMAT = "indexes.collection"
FORMAT_VERSION = 2  # 1: one data folder per version; 2: segments
MANIFEST = "manifest.json"
LOCK = ".writer.lock"
COMMITTED = ".committed"  # the version of the last durable commit (see newer_files)
DATA_RE = re.compile(r"^v\d{6}-[0-9a-f]{8}$")  # format 1 data folders: v<version>-<random>
SEGMENT_RE = re.compile(r"^s\d{6}-[0-9a-f]{8}$")  # segment folders: s<version>-<random>
TEMPLATE_RE = re.compile(r"^t\d{6}-[0-9a-f]{8}\.faiss$")  # trained index templates
QUERIES_RE = re.compile(r"^q\d{6}-[0-9a-f]{8}\.npz$")  # stored tuning queries
GENERATION_RE = re.compile(
    r"^(index|lists|deleted|lexical)-(\d{6})-[0-9a-f]{8}\.(faiss|ivf|npy|sqlite)$"
)  # inside segments


class CollectionBusyError(RuntimeError):
    """Another writable handle (in this or another process) holds the collection."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (see :func:`indexes.files.fsync_dir`)."""
    files.fsync_dir(path)


def write_manifest(path: Path, manifest: dict[str, Any]) -> bool:
    """Atomically replace ``path/manifest.json``: the commit point of every save.

    Raises when nothing was committed. Once the rename has happened the new version *is* the
    collection: a failure to fsync the directory afterwards is logged and reported by returning
    False (the commit may not survive a power loss, so the caller must keep the files of the
    previous version), never raised.
    """
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
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
    try:
        fsync_dir(path)
    except OSError as exc:
        logger.warning("committed %s but could not fsync its folder (%s); old files are kept", path, exc)
        return False
    _write_committed(path, int(manifest.get("version", 0)))
    return True


def _write_committed(path: Path, version: int) -> None:
    """Record the version of a durable commit (after the manifest: a crash leaves it one behind, never ahead)."""
    tmp = path / f".{COMMITTED}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{version}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path / COMMITTED)
    except OSError as exc:  # the mark is advisory: the commit itself is done
        logger.warning("could not record the commit of version %d in %s (%s)", version, path, exc)
        tmp.unlink(missing_ok=True)


def read_committed(path: Path) -> int:
    """The version recorded by the last durable commit, or -1 (collections written before the record)."""
    try:
        return int((path / COMMITTED).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return -1


def generation(name: str) -> int | None:
    """The generation in a file or folder name a collection writes (``s000012-...`` -> 12), else None."""
    if SEGMENT_RE.match(name) or TEMPLATE_RE.match(name) or QUERIES_RE.match(name):
        return int(name[1:7])
    m = GENERATION_RE.match(name)
    return int(m.group(2)) if m else None


def newer_files(path: Path, manifest: dict[str, Any]) -> tuple[list[str], int]:
    """Files and folders (relative names) that a version newer than ``manifest`` wrote, and the newest
    version recorded; empty when the manifest is the newest.

    A writer names what it writes for its next commit with generation ``version + 1``, so after a
    crash such files may be left over; anything of a later generation, or of generation
    ``version + 1`` once a commit of that version was recorded, belongs to a committed newer version.
    """
    version = int(manifest.get("version", 0))
    committed = read_committed(path)
    allowed = version + 1 if committed <= version else version
    found: list[str] = []
    newest = max(version, committed)
    named = {e["name"] for e in manifest.get("segments") or []}
    try:
        children = list(path.iterdir())
    except OSError:
        return [], newest
    for child in children:
        gen = generation(child.name)
        if gen is not None and gen > allowed:
            found.append(child.name)
            newest = max(newest, gen)
        if child.name in named and child.is_dir():
            try:
                inside = list(child.iterdir())
            except OSError:
                continue
            for item in inside:
                gen = generation(item.name)
                if gen is not None and gen > allowed:
                    found.append(f"{child.name}/{item.name}")
                    newest = max(newest, gen)
    if committed > version and not found:
        found.append(COMMITTED)
    return sorted(found), newest


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
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"collection {path} has format version {version!r}, this library reads up to {FORMAT_VERSION}: "
            "upgrade the indexes package"
        )
    return manifest


def lock(path: Path) -> int | None:
    """Take the collection's writer lock (non-blocking flock); returns the descriptor to :func:`unlock`."""
    if fcntl is None or not path.is_dir():
        return None
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise files.ReadOnlyStorageError(
                exc.errno,
                f"cannot open collection {path} for writing ({os.strerror(exc.errno or 0)}): open it with "
                "read_only=True to search it, or copy it to a writable place",
            ) from exc
        raise
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


def remove_file(file: Path) -> None:
    try:
        file.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not delete unused collection file %s (%s); it is safe to delete", file, exc)


def referenced(manifest: dict[str, Any]) -> tuple[set[str], dict[str, set[str]]]:
    """(top-level names, {segment folder: file names}) that a format-2 manifest refers to."""
    top = {MANIFEST, LOCK, COMMITTED}
    inside: dict[str, set[str]] = {}
    for entry in manifest.get("segments") or []:
        names = set((entry.get("files") or {}).keys())
        for key in ("index", "deleted", "lexical"):
            if entry.get(key):
                names.add(entry[key]["file"])
        inside[entry["name"]] = names
        top.add(entry["name"])
    for key in ("template", "queries"):
        if manifest.get(key):
            top.add(manifest[key]["file"])
    return top, inside


def describe_newer(manifest: dict[str, Any], newer: list[str], newest: int) -> str:
    """One sentence about the files :func:`newer_files` found."""
    shown = ", ".join(newer[:4]) + (f" and {len(newer) - 4} more" if len(newer) > 4 else "")
    return (
        f"it is version {manifest.get('version')}, but files of newer versions (up to {newest}) exist: "
        f"{shown}; it was probably replaced by an older copy"
    )


def collect_garbage(path: Path, keep: list[dict[str, Any]], protect: set[Path] | None = None) -> None:
    """Delete what none of the manifests in ``keep`` refers to: segment and format-1 folders, templates,
    query files, superseded index / deletion files and temporary files. Names the collection does not
    make (e.g. an ``embed/`` state folder beside it) are never touched, nor the paths in ``protect``
    (files written for a commit still to come, possibly still being written by a worker)."""
    protect = protect or set()
    top: set[str] = set()
    inside: dict[str, set[str]] = {}
    for manifest in keep:
        t, i = referenced(manifest)
        top |= t
        for name, names in i.items():
            inside.setdefault(name, set()).update(names)
    for child in path.iterdir():
        name = child.name
        if child in protect:
            continue
        if name in top:
            if name in inside and child.is_dir():
                for item in child.iterdir():
                    if (
                        GENERATION_RE.match(item.name)
                        and item.name not in inside[name]
                        and item not in protect
                    ):
                        remove_file(item)
            continue
        if child.is_dir() and (SEGMENT_RE.match(name) or DATA_RE.match(name)):
            remove_folder(child)
        elif (
            TEMPLATE_RE.match(name)
            or QUERIES_RE.match(name)
            or (name.startswith((f".{MANIFEST}.", f".{COMMITTED}.")) and name.endswith(".tmp"))
        ):
            remove_file(child)
