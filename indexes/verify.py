"""Verify one consistent version of a collection, beside any writer, and repair it under the writer lock.

:func:`verify_path` reads the manifest, checks every file it names (:mod:`indexes.checking`) and
reads the manifest again. A writer that committed meanwhile may have deleted files of the version
being checked (merged segments, superseded deletion records): problems found while the manifest
moved are not trusted, and the check runs again on the new version (segments already found intact
are not read again, so a check converges beside a busy writer). The report is about one version,
every file of which was read while it was current: no false alarm, whatever a writer does.

``repair=True`` then takes the writer lock, reads the manifest once more (a writer may have
committed before the lock was taken: the check is redone on that version, which can no longer
move) and commits the repair on top of the newest version (:mod:`indexes.repair`), never over it.
When another process holds the lock, nothing is repaired and the report says so.

It works on a path, so it also reports on a collection too damaged to open.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from indexes import legacy, persist
from indexes.checking import CheckCache, Checker, Problem, Report
from indexes.files import DamagedFileError
from indexes.location import local_folder
from indexes.persist import CollectionBusyError
from indexes.repair import Repairer

__all__ = ["MAX_ATTEMPTS", "Problem", "Report", "verify_path"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 100  # versions a check follows beside a writer before it gives up (CollectionBusyError)


def verify_path(path: str | Path, repair: bool = False, locked: bool = False) -> Report:
    """Read and check everything of the collection at ``path``; ``repair=True`` commits what can be fixed.

    ``locked`` says the caller already holds the writer lock (an open writable handle). Raises
    :class:`indexes.CollectionBusyError` when writers kept committing through ``MAX_ATTEMPTS``
    versions before one could be checked whole.
    """
    path = local_folder(path, "verify_path (retrieval check)")
    t0 = time.perf_counter()
    cache = CheckCache()
    report, checker, manifest = _consistent_check(path, cache)
    if repair and not report.ok:
        try:
            lock_fd = None if locked else persist.lock(path)
        except CollectionBusyError as exc:
            report.notes.append(f"nothing was repaired: {exc}; run the repair again once it is closed")
            report.seconds = time.perf_counter() - t0
            return report
        try:
            if _version(persist.read_manifest(path)) != _version(manifest):
                # a writer committed between the check and the lock: check the version that is now fixed
                report, checker, manifest = _consistent_check(path, cache)
            if not report.ok and checker is not None:
                Repairer(path, checker.manifest, checker, report).run()
        finally:
            persist.unlock(lock_fd)
    report.bytes_read = cache.bytes_read
    report.seconds = time.perf_counter() - t0
    return report


def _version(manifest: dict[str, Any]) -> int:
    return int(manifest.get("version", 0))


def _consistent_check(path: Path, cache: CheckCache) -> tuple[Report, Checker | None, dict[str, Any]]:
    """(report, checker, manifest) of one version, checked while it stayed the current one."""
    for _ in range(MAX_ATTEMPTS):
        manifest = persist.read_manifest(path)
        report = Report(str(path))
        try:
            checker = _check(path, manifest, report, cache)
        except (
            OSError,
            ValueError,
        ):  # a file vanished between two reads of it: trusted only if nothing moved
            if _version(persist.read_manifest(path)) != _version(manifest):
                continue
            raise
        if report.ok or _version(persist.read_manifest(path)) == _version(manifest):
            return report, checker, manifest
        logger.info("%s: a writer committed during the check; checking the new version", path)
    raise CollectionBusyError(
        f"collection {path} changed {MAX_ATTEMPTS} times while it was being checked: writers kept "
        "committing; run the check again when writes pause"
    )


def _check(path: Path, manifest: dict[str, Any], report: Report, cache: CheckCache) -> Checker | None:
    if int(manifest["format_version"]) < 2:
        report.notes.append("format 1: no checksums were recorded; files are checked for consistency only")
        try:
            manifest = legacy.as_segments(path, manifest)
        except DamagedFileError as exc:
            report.files_checked += 1
            report.problems.append(
                Problem(
                    str(exc.file.relative_to(path)) if exc.file.is_relative_to(path) else str(exc.file),
                    exc.detail,
                    "cannot be repaired: format 1 kept no checksums to rebuild from; restore a backup",
                    repairable=False,
                )
            )
            return None
    checker = Checker(path, manifest, report, cache)
    checker.run()
    return checker
