"""How changes reach disk: the buffer becomes a segment, deletion records are written, merges join the
same commit, and the manifest is replaced (the commit point); then what no version names is deleted.

:class:`Saving` is a base of :class:`indexes.collection.Collection`. The buffer of unsaved items is
written as a segment before the save when it outgrows ``Limits.buffer_bytes`` (or its share of
the memory budget), so a writable handle never holds all vectors; segments are capped at
``_segment_max_rows()`` rows. See :mod:`indexes.persist` for the commit protocol.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexes import files, persist
from indexes import segment as segments_module
from indexes.limits import DEFAULT_BUFFER_BYTES
from indexes.persist import FORMAT_VERSION
from indexes.segment import Buffer, Segment

__all__ = ["Saving"]

logger = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Saving:
    """Saves and commits (a base of :class:`indexes.collection.Collection`)."""

    def _generation(self) -> int:
        return int(self._manifest.get("version", 0)) + 1

    def _buffer_limit(self) -> int:
        if self._limits.buffer_bytes is not None:
            return int(self._limits.buffer_bytes)
        if self._budget:
            return max(64 << 10, int(self._budget) // 8)
        return DEFAULT_BUFFER_BYTES

    def _segment_max_rows(self) -> int:
        cap = self._limits.segment_max_bytes
        limit = cap if not self._budget else max(1 << 20, min(cap, int(self._budget) // 2))
        return max(self._limits.segment_min_rows, limit // (self._dim * 4 + 8))

    def _segment_name(self) -> str:
        return f"s{int(self._manifest.get('version', 0)) + 1:06d}-{secrets.token_hex(4)}"

    def _flush_buffer(self) -> None:
        """Write the buffer as a segment now (committed by the next save): bounds memory."""
        assert self._buffer is not None
        if not self._buffer.rows:
            return
        if not self._buffer.n_live:  # every buffered row was removed: nothing to write
            self._buffer.close()
            self._buffer = Buffer(self._dim, self._template, self._lexical)
            self._filters.clear()
            return
        name = self._segment_name()
        generation = int(self._manifest.get("version", 0)) + 1
        with files.storage_errors(self._path, "write unsaved items to disk", self._buffer.nbytes * 2):
            try:
                entry = self._buffer.flush(self._path, name, generation, self._limits.lexicon_chunk_rows)
            except BaseException:
                persist.remove_folder(self._path / name)
                raise
        self._pending.add(self._path / name)
        segment = Segment.open(self._path, entry, self._dim, self._template, check=False)
        self._segments.append(segment)
        self._deleted_fields[segment.name] = {}
        self._buffer.close()
        self._buffer = Buffer(self._dim, self._template, self._lexical)
        self._filters.clear()

    def _discard_pending(self) -> None:
        """Delete files written for a commit that will not happen (closing without saving)."""
        if self._read_only:
            return
        for path in sorted(self._pending):
            if path.is_dir():
                persist.remove_folder(path)
            else:
                persist.remove_file(path)
        self._pending.clear()

    def save(self) -> None:
        """Commit the changes atomically (see the module doc).

        Trains, tunes or chooses the index first when due; merges segments as the policy of
        :mod:`indexes.compaction` asks, in the same commit (merged segments' removed rows are dropped,
        not recorded). Writes only the new segment, merged segments, changed deletion records and
        the manifest.
        """
        self._check_open(write=True)
        assert self._buffer is not None
        self._before_save()
        if not self._dirty and self._manifest.get("version"):
            return
        version = int(self._manifest.get("version", 0)) + 1
        created: list[Path] = []
        opened: list[Segment] = []
        segments = list(self._segments)
        replaced: list[Segment] = []
        rewritten = 0
        needed = self._buffer.nbytes * 2 + 8 * sum(s.deleted.size for s in segments) + (1 << 20)
        try:
            with files.storage_errors(self._path, "save the collection", needed):
                files.check_free_space(self._path, needed, "save the collection")
                if self._buffer.rows and self._buffer.n_live:
                    name = f"s{version:06d}-{secrets.token_hex(4)}"
                    created.append(self._path / name)
                    entry = self._buffer.flush(self._path, name, version, self._limits.lexicon_chunk_rows)
                    segment = Segment.open(self._path, entry, self._dim, self._template, check=False)
                    opened.append(segment)
                    segments.append(segment)
                runs = self._planned_merges(segments)
                if runs:
                    segments, replaced, rewritten = self._apply_merges(segments, runs, created)
                    opened.extend(s for s in segments if s.folder in created)
                for i, seg in enumerate(segments):
                    if seg.name not in self._changed_deletes:
                        continue
                    record = segments_module.write_deleted(
                        seg.folder,
                        seg.deleted,
                        version,
                        seg.n_deleted_rows,
                        self._deleted_fields.get(seg.name, {}),
                    )
                    created.append(seg.folder / record["file"])
                    segments[i] = seg.with_deleted(seg.deleted, dict(seg.entry, deleted=record))
                for seg in segments:
                    if (
                        seg.folder in created
                        or seg.folder in self._pending
                        or seg.name in self._changed_deletes
                    ):
                        persist.fsync_dir(seg.folder)
                self._commit(self._manifest_for(version, segments), previous=self._manifest)
        except BaseException:
            for seg in opened:
                seg.close()
            for path in created:
                if path.is_dir():
                    persist.remove_folder(path)
                else:
                    persist.remove_file(path)
            raise
        for seg in replaced:
            if seg not in opened:
                seg.close()
            self._deleted_fields.pop(seg.name, None)
        self._segments = segments
        for seg in segments:
            self._deleted_fields.setdefault(
                seg.name, dict((seg.entry.get("deleted") or {}).get("fields") or {})
            )
        if self._buffer.rows:
            self._buffer.close()
            self._buffer = Buffer(self._dim, self._template, self._lexical)
        self._changed_deletes.clear()
        self._filters.clear()
        if rewritten:
            self._after_merge(rewritten)

    def _manifest_for(self, version: int, segments: Sequence[Segment]) -> dict[str, Any]:
        manifest = dict(self._manifest)
        manifest.update(
            format_version=FORMAT_VERSION,
            version=version,
            count=sum(s.n_live for s in segments),
            next_id=self._next_id,
            index_requested=self._requested,
            index_spec=self._template.spec,
            params=dict(self._params),
            fingerprint=self._fingerprint,
            updated=_now(),
            segments=[s.entry for s in segments],
            template=self._template_record,
            queries=self._queries_record,
            auto=self._auto,
            lexical=self._lexical.as_dict() if self._lexical else None,
        )
        return manifest

    def _commit(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Replace the manifest (the commit point), then delete what no manifest refers to any more."""
        with files.storage_errors(self._path, "save the collection"):
            persist.fsync_dir(self._path)  # new folders and files are durable before the manifest names them
            durable = persist.write_manifest(self._path, manifest)
        self._manifest = manifest
        self._pending.clear()
        self._dirty = False
        keep = [manifest] if durable or previous is None else [manifest, previous]
        self._collect_garbage(keep)

    def _collect_garbage(self, keep: list[dict[str, Any]]) -> None:
        if self._read_only:
            return
        try:
            persist.collect_garbage(self._path, keep, protect=self._pending | self._in_flight)
        except OSError as exc:  # pragma: no cover - garbage is harmless
            logger.warning("could not clean unused files of %s (%s)", self._path, exc)
