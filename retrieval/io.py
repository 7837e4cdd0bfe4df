"""Durable file operations: the one home of every write that must survive a crash.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: write a
  temporary sibling, fsync it, rename it over the target. A reader (or a run after a crash) sees
  the old file or the new one, never half of one. ``durable=False`` skips the fsync, for many
  small files that are cheap to make again.
* :func:`atomic_path`: the same for a file written by a streaming writer (Parquet, JSON Lines).
* :func:`staged_directory`: build a folder under a temporary sibling name, then swap it into
  place (:func:`swap_directory`); a crash leaves the previous folder or the new one.
* :func:`settle_file`: give a file written by another library (safetensors writes 0600) the usual
  permissions of a new file and flush it to disk; :func:`fsync_file` only flushes.
* :func:`remove_temporaries`: the temporary files a writer killed mid-write left in a folder.
* :class:`FileLock`: an exclusive advisory lock held for as long as it is open.

New files get the usual permissions: ``0666`` minus the process umask (``0644`` under the common
umask ``022``), like any file a program creates; folders ``0777`` minus the umask.

Temporary names start with a dot and end in ``.tmp`` (files) or carry ``.tmp-`` (folders), so
listings and readers can tell them from committed files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FileLock",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_file",
    "remove_temporaries",
    "settle_file",
    "staged_directory",
    "swap_directory",
]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _read_umask()  # os.umask is process-wide and not thread-safe to probe later


def current_umask() -> int:
    """The process umask now: read from ``/proc/self/status`` where the kernel shows it (Linux), else
    the one the process had when this module was imported."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename (fsync'ed unless ``durable=False``).

    The file gets the usual permissions of a new file (``0666`` minus the umask); parent folders are
    created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # O_EXCL: never follow or reuse a file someone else made; mode 0666: the kernel applies the umask
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike[str], value: Any, **dumps: Any) -> None:
    """:func:`atomic_write_text` of ``json.dumps(value, **dumps)`` plus a final newline."""
    atomic_write_text(path, json.dumps(value, **dumps) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer that streams (a Parquet writer, a JSONL file
    written line by line); on a clean exit it is fsync'ed and renamed over ``path``, on an error
    removed, so ``path`` holds the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush ``path`` (written by someone else, e.g. numpy) to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def settle_file(path: str | os.PathLike[str]) -> None:
    """Give ``path``, written by another library, the usual permissions of a new file (``0666`` minus
    the umask: safetensors creates its files ``0600``) and flush it to disk."""
    os.chmod(path, 0o666 & ~current_umask())
    fsync_file(path)


def remove_temporaries(folder: str | os.PathLike[str]) -> None:
    """Remove the temporary files :func:`atomic_write_bytes` leaves when killed mid-write."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def swap_directory(tmp: str | os.PathLike[str], directory: str | os.PathLike[str]) -> None:
    """Rename folder ``tmp`` to ``directory``; an existing ``directory`` is moved aside first and
    removed once the new one is in place (put back if the rename fails)."""
    tmp, directory = Path(tmp), Path(directory)
    old = None
    if directory.exists():
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        if old is not None:
            os.replace(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder of ``directory``; fill it, and on a clean exit it
    replaces ``directory`` (:func:`swap_directory`). On an error it is removed and ``directory``
    is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        swap_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FileLock:
    """An exclusive advisory lock on ``path`` (created when missing), held until :meth:`close`.

    Taken without waiting: when another process holds it, ``ValueError(busy)`` is raised, so the
    message can say what is running and what to do. A no-op where the platform has no ``fcntl``.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy: str) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(busy) from None
        self._fd = fd

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
