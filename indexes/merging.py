"""Merging segments: rewriting adjacent segments without their removed rows, as the policy of
:mod:`indexes.compaction` plans (or all of them: ``compact(force=True)``, ``rebuild()``).

:class:`Merging` is a base of :class:`indexes.collection.Collection`. Every source file is checked
whole first (damage is never copied), new segments are written by :func:`indexes.segment.write_merged`
(each at most ``_segment_max_rows()`` rows) and swapped in whole once written.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexes import compaction, files, persist
from indexes.files import DamagedFileError
from indexes.segment import Segment, write_merged
from indexes.template import Template

__all__ = ["Merging"]

logger = logging.getLogger(__name__)


def _bytes_of(seg: Segment) -> int:
    """Bytes a merge writes for a segment: its recorded file sizes, in proportion of its live rows."""
    total = 0
    for digest in (seg.entry.get("files") or {}).values():
        total += int(digest["size"]) if digest else seg.rows * (seg.vectors.shape[1] * 4 + 64)
    record = seg.entry.get("index") or {}
    if record.get("digest"):
        total += int(record["digest"]["size"])
    return int(total * seg.n_live / max(seg.rows, 1))  # removed rows are not copied


class Merging:
    """Merges of segments (a base of :class:`indexes.collection.Collection`)."""

    def compact(self, force: bool = False) -> list[str]:
        """Merge segments as :mod:`indexes.compaction` plans (all of them, dropping every removed row,
        with ``force=True``) and commit; unsaved changes are saved first. Returns the new segment names."""
        self._check_open(write=True)
        return self._compact_now(force=force)

    def _verify_sources(self, segments: Sequence[Segment]) -> None:
        """Whole-file checksums of everything a merge or rebuild is about to copy."""
        hint = f"run `retrieval check {self.path} --repair` (or Collection.verify(repair=True)) or restore a backup"
        for seg in segments:
            for name, digest in (seg.entry.get("files") or {}).items():
                bad = files.verify_file(seg.folder / name, digest)
                if bad:
                    raise DamagedFileError(
                        seg.folder / name, files.describe_damage(bad), f"nothing was merged; {hint}"
                    )

    def _merge(
        self, segments: Sequence[Segment], template: Template | None, created: list[Path]
    ) -> list[Segment]:
        """Rewrite ``segments`` (adjacent, ascending ids) without their removed rows as new segments of at
        most the collection's segment size; ``template`` None writes no index. New folders go in ``created``."""

        self._verify_sources(segments)
        max_rows = self._segment_max_rows()
        # the live rows, in order, cut into chunks of at most max_rows: [(segment, rows)] per new segment
        chunks: list[list[tuple[Segment, np.ndarray]]] = [[]]
        room = max_rows
        for seg in segments:
            mask = seg.live_mask()
            rows = np.arange(seg.rows) if mask is None else np.flatnonzero(mask)
            start = 0
            while start < rows.size:
                take = min(room, rows.size - start)
                chunks[-1].append((seg, rows[start : start + take]))
                start += take
                room -= take
                if room == 0:
                    chunks.append([])
                    room = max_rows
        out: list[Segment] = []
        generation = self._generation()
        use = template if template is not None and template.ready else None
        for chunk in chunks:
            if not chunk:
                continue
            name = f"s{generation:06d}-{secrets.token_hex(4)}"
            created.append(self.path / name)
            entry = write_merged(
                self.path,
                name,
                chunk,
                self.dim,
                use,
                generation,
                self._lexical,
                self._limits.lexicon_chunk_rows,
            )
            out.append(Segment.open(self.path, entry, self.dim, template or self._template, check=False))
        return out

    def _planned_merges(self, segments: Sequence[Segment], force: bool = False) -> list[tuple[int, int]]:
        sizes = [compaction.SegmentSize(s.rows, s.n_deleted_rows) for s in segments]
        return compaction.plan(sizes, self._segment_max_rows(), force=force, limits=self._limits)

    def _apply_merges(
        self, segments: list[Segment], runs: list[tuple[int, int]], created: list[Path]
    ) -> tuple[list[Segment], list[Segment], int]:
        """(new segment list, replaced segments, rows rewritten) after merging ``runs`` of ``segments``."""
        out: list[Segment] = []
        replaced: list[Segment] = []
        rewritten = 0
        pos = 0
        for lo, hi in runs:
            out.extend(segments[pos:lo])
            run = segments[lo:hi]
            merged = self._merge(run, self._template, created)
            out.extend(merged)
            replaced.extend(run)
            rewritten += sum(s.n_live for s in merged)
            pos = hi
        out.extend(segments[pos:])
        return out, replaced, rewritten

    def _apply_merges_without_index(
        self, segments: list[Segment], runs: list[tuple[int, int]], created: list[Path]
    ) -> tuple[list[Segment], list[Segment], int]:
        out: list[Segment] = []
        replaced: list[Segment] = []
        pos = 0
        for lo, hi in runs:
            out.extend(segments[pos:lo])
            out.extend(self._merge(segments[lo:hi], None, created))
            replaced.extend(segments[lo:hi])
            pos = hi
        out.extend(segments[pos:])
        return out, replaced, 0

    def _compact_now(self, force: bool = False) -> list[str]:
        if self._dirty:
            self.save()
        runs = self._planned_merges(self._segments, force=force)
        if not runs:
            return []
        created: list[Path] = []
        before = list(self._segments)
        needed = sum(_bytes_of(s) for lo, hi in runs for s in before[lo:hi])
        try:
            with files.storage_errors(self.path, "compact the collection", needed):
                files.check_free_space(self.path, needed, "compact the collection")
                new, replaced, rewritten = self._apply_merges(before, runs, created)
                self._segments = new
                self._dirty = True
                self._commit(self._manifest_for(self._generation(), new), previous=self._manifest)
        except BaseException:
            self._segments = before
            for path in created:
                persist.remove_folder(path)
            raise
        for seg in replaced:
            seg.close()
            self._deleted_fields.pop(seg.name, None)
            self._changed_deletes.discard(seg.name)
        names = [s.name for s in new if s not in before]
        self._after_merge(rewritten)
        return names

    def _after_merge(self, rewritten: int) -> None:
        """Re-check the tuned parameters once merges rewrote a large share of the rows."""
        n = len(self)
        if (
            rewritten >= self._limits.retune_after_merge * max(n, 1)
            and "tuned_on" in self._params
            and self._tunable()
        ):
            self._tune_now()
            self._commit(self._manifest_for(self._generation(), self._segments), previous=self._manifest)
