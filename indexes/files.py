"""Durable, checksummed files: every file a collection commits is written and verified through here.

Each committed file is immutable and described by a *digest*: its size and one CRC-32 per
block of ``BLOCK`` bytes (the manifest stores it). A block-wise checksum says not only that a
file is damaged but where, so a repair can keep the intact rows of a large file. CRC-32 is
what Lucene writes in the footer of each immutable index file; here it lives in the manifest,
so the data files stay plain ``.npy`` / SQLite / FAISS files that other tools can read.

Writes go through :class:`DigestWriter` (hash while writing, fsync before close), and errors a
user can act on are translated: a full disk raises :class:`StorageFullError` (how much was
needed, how much is free), a read-only file system :class:`ReadOnlyStorageError`; a damaged or
missing file found on reading raises :class:`DamagedFileError` naming the file, the byte range
and the expected and found checksums.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "BLOCK",
    "DamagedFileError",
    "DigestWriter",
    "NpyWriter",
    "ReadOnlyStorageError",
    "StorageFullError",
    "check_free_space",
    "digest_bytes",
    "digest_file",
    "fsync_dir",
    "fsync_file",
    "reading",
    "storage_errors",
    "verify_file",
    "write_bytes",
    "write_npy",
]

BLOCK = 1 << 24  # 16 MiB: one CRC-32 per block (a 1M x 256 float32 file has 62 of them)
_READ = 1 << 22  # read/verify in 4 MiB pieces


class DamagedFileError(ValueError):
    """A committed file is missing, truncated or does not match its recorded checksum."""

    def __init__(self, file: Path, detail: str, hint: str = "") -> None:
        self.file = Path(file)
        self.detail = detail
        super().__init__(f"{file} is damaged: {detail}" + (f"; {hint}" if hint else ""))


@contextmanager
def reading(path: Path, hint: str = "") -> Iterator[None]:
    """Errors of numpy, FAISS or SQLite while reading ``path`` become a :class:`DamagedFileError` naming it."""
    try:
        yield
    except DamagedFileError:
        raise
    except FileNotFoundError as exc:
        raise DamagedFileError(path, "the file is missing", hint) from exc
    except (ValueError, RuntimeError, EOFError, sqlite3.DatabaseError) as exc:
        raise DamagedFileError(path, f"it cannot be read ({_reason(exc)})", hint) from exc


def _reason(exc: BaseException) -> str:
    """The informative part of an error message (FAISS prefixes its own with the C++ function and line)."""
    text = str(exc).strip()
    text = text.splitlines()[-1] if text else type(exc).__name__
    m = re.search(r" at \S+:\d+: (?:Error: )?(.*)$", text)
    return (m.group(1) if m else text)[:200]


class StorageFullError(OSError):
    """No space left on the device while saving (the previous committed version is intact)."""


class ReadOnlyStorageError(OSError):
    """The collection's folder is on a read-only file system."""


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (for the current user)."""
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:  # pragma: no cover - path vanished
        return -1


def check_free_space(path: Path, needed: int, what: str) -> None:
    """Fail early, before writing anything, when ``needed`` bytes cannot fit under ``path``."""
    free = free_bytes(path)
    if 0 <= free < needed:
        raise StorageFullError(
            errno.ENOSPC,
            f"not enough space to {what}: about {_human(needed)} needed, {_human(free)} free on the "
            f"file system of {path}; free some space (or move the collection) and try again. The last "
            "committed version is intact",
        )


@contextmanager
def storage_errors(folder: Path, what: str, needed: int | None = None) -> Iterator[None]:
    """Translate ENOSPC / EDQUOT / SQLITE_FULL / EROFS raised inside the block into errors that say what to do.

    ``needed`` is the caller's estimate of the bytes the block writes (said in the message).
    """
    free_before = free_bytes(folder)

    def full(code: int) -> StorageFullError:
        estimate = f", estimated {_human(needed)}" if needed else ""
        return StorageFullError(
            code,
            f"no space left on the device while trying to {what}: it needed more than the "
            f"{_human(max(free_before, 0))} that were free on the file system of {folder}{estimate}; free some "
            "space and try again. The last committed version is intact",
        )

    try:
        yield
    except sqlite3.OperationalError as exc:  # SQLite reports a full disk as SQLITE_FULL, not an OSError
        if getattr(exc, "sqlite_errorcode", None) != 13 and "disk is full" not in str(exc):
            raise
        raise full(errno.ENOSPC) from exc
    except OSError as exc:
        if isinstance(exc, (StorageFullError, ReadOnlyStorageError)):
            raise
        code = exc.errno
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise full(code) from exc
        if code == errno.EROFS:
            raise ReadOnlyStorageError(
                code,
                f"cannot {what}: {folder} is on a read-only file system; open the collection with "
                "read_only=True to search it, or copy it to a writable place",
            ) from exc
        raise


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable (a no-op where directories cannot be opened)."""
    if os.name == "nt":  # pragma: no cover - Windows cannot fsync a directory handle
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- digests
class _BlockHasher:
    """CRC-32 per ``BLOCK`` bytes of a stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.size = 0
        self.crcs: list[str] = []
        self._crc = 0
        self._in_block = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), BLOCK - self._in_block)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._in_block += take
            self.size += take
            view = view[take:]
            if self._in_block == BLOCK:
                self.crcs.append(f"{self._crc:08x}")
                self._crc, self._in_block = 0, 0

    def digest(self) -> dict[str, Any]:
        crcs = list(self.crcs)
        if self._in_block or not crcs:
            crcs.append(f"{self._crc:08x}")
        return {"size": self.size, "crc32": crcs, "block": BLOCK}


def digest_bytes(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    hasher = _BlockHasher()
    hasher.update(data)
    return hasher.digest()


def digest_file(path: Path) -> dict[str, Any]:
    """The digest of the file at ``path`` as it is now (reads it whole)."""
    hasher = _BlockHasher()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            hasher.update(chunk)
    return hasher.digest()


@dataclass(frozen=True)
class BadBlock:
    """One block of a file whose CRC does not match."""

    start: int  # first byte
    stop: int  # one past the last byte
    expected: str
    found: str


def verify_file(path: Path, digest: dict[str, Any] | None, full: bool = True) -> list[BadBlock] | str | None:
    """Check ``path`` against ``digest``.

    Returns None when it matches, a sentence when the file is missing or has the wrong size,
    or the list of damaged blocks. ``full=False`` checks existence and size only.
    """
    if not path.exists():
        return "the file is missing"
    if digest is None:
        return None  # written by a format that recorded no checksum
    size = path.stat().st_size
    if size != int(digest["size"]):
        return f"its size is {size} bytes, {int(digest['size'])} were written"
    if not full:
        return None
    block = int(digest.get("block", BLOCK))
    expected = list(digest["crc32"])
    bad: list[BadBlock] = []
    with open(path, "rb") as fh:
        for b, want in enumerate(expected):
            crc = 0
            left = min(block, size - b * block)
            while left > 0:
                chunk = fh.read(min(_READ, left))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            if f"{crc:08x}" != want:
                bad.append(BadBlock(b * block, min(size, (b + 1) * block), want, f"{crc:08x}"))
    return bad or None


def verify_ends(path: Path, digest: dict[str, Any]) -> list[BadBlock] | None:
    """Check only the first and the last block of ``path`` (headers and tail): cheap for large files."""
    block = int(digest.get("block", BLOCK))
    size = int(digest["size"])
    expected = list(digest["crc32"])
    bad: list[BadBlock] = []
    with open(path, "rb") as fh:
        for b in sorted({0, len(expected) - 1}):
            fh.seek(b * block)
            crc = 0
            left = min(block, size - b * block)
            while left > 0:
                chunk = fh.read(min(_READ, left))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            if f"{crc:08x}" != expected[b]:
                bad.append(BadBlock(b * block, min(size, (b + 1) * block), expected[b], f"{crc:08x}"))
    return bad or None


def describe_damage(result: list[BadBlock] | str) -> str:
    """One sentence for :class:`DamagedFileError` from a :func:`verify_file` result."""
    if isinstance(result, str):
        return result
    first = result[0]
    more = f" (and {len(result) - 1} more damaged block(s))" if len(result) > 1 else ""
    return (
        f"bytes {first.start}-{first.stop - 1} have CRC-32 {first.found}, {first.expected} was recorded when "
        f"it was written{more}"
    )


# ---------------------------------------------------------------------------------------------- writing
class DigestWriter:
    """A binary file opened for writing that hashes what goes through it and fsyncs on close.

    Use as a context manager; ``digest`` is set after a clean exit. The file must not exist yet
    (committed files are never rewritten).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._hasher = _BlockHasher()
        self._fh: BinaryIO = open(self.path, "xb")  # noqa: SIM115 - closed in __exit__
        self.digest: dict[str, Any] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._fh.write(view)
        self._hasher.update(view)
        return len(view)

    def __enter__(self) -> DigestWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
        if exc_type is None:
            self.digest = self._hasher.digest()


def write_bytes(path: Path, data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Write a new immutable file, fsynced; returns its digest."""
    with DigestWriter(path) as out:
        out.write(data)
    assert out.digest is not None
    return out.digest


def write_npy(path: Path, array: np.ndarray, rows_per_write: int = 1 << 16) -> dict[str, Any]:
    """Write ``array`` (any array-like with ``shape``/``dtype``, e.g. a memmap) as ``.npy`` in row chunks."""
    array = np.asanyarray(array)
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": array.shape,
    }
    with DigestWriter(path) as out:
        buf = _NpyHeader()
        np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[arg-type]
        out.write(buf.data)
        if array.ndim == 0:
            out.write(np.ascontiguousarray(array).tobytes())
        else:
            for lo in range(0, array.shape[0], rows_per_write):
                out.write(np.ascontiguousarray(array[lo : lo + rows_per_write]).data)
    assert out.digest is not None
    return out.digest


class NpyWriter:
    """Write a ``.npy`` file of known ``shape`` row block by row block (e.g. merging segments)."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        self._out = DigestWriter(path)
        self._dtype = np.dtype(dtype)
        self._rows = int(shape[0])
        self._written = 0
        header = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False, "shape": shape}
        buf = _NpyHeader()
        np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[arg-type]
        self._out.write(buf.data)
        self.digest: dict[str, Any] | None = None

    def write(self, rows: np.ndarray) -> None:
        block = np.ascontiguousarray(rows, dtype=self._dtype)
        self._out.write(block.data)
        self._written += block.shape[0]

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._written != self._rows:
            self._out.__exit__(ValueError, None, None)
            raise AssertionError(f"wrote {self._written} rows, the header says {self._rows}")
        self._out.__exit__(exc_type, exc, tb)
        self.digest = self._out.digest


class _NpyHeader:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def npy_shape(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape from a ``.npy`` header (reads a few hundred bytes)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if fortran:
        raise ValueError(f"{path} is stored in Fortran order, expected C order")
    return dtype, tuple(shape)
