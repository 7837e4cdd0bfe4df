"""Training an index and building every segment's share of it; the index work a save does first.

:class:`IndexBuilding` is a base of :class:`indexes.collection.Collection` and works on its state:
``_segments``, ``_template`` (and ``_template_record``), ``_buffer``, ``_params``, ``_pending``,
``_requested``, ``_limits``. It changes that state only by swapping whole values (segment lists,
templates) once the new files are written, so a failure part-way leaves the handle as it was
(the files written so far are deleted). Trainable kinds (IVF, PQ, SQ) train on a seeded sample
once the collection holds ``min_train_size`` vectors (:meth:`indexes.template.Template.min_train_size`,
from ``Limits.points_per_centroid`` / ``codes_min_train``); until then every search is exact.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexes import faiss_index as fi
from indexes import files, metadata, persist
from indexes.segment import Buffer, Segment, write_index_record
from indexes.template import Template

__all__ = ["IndexBuilding", "IndexState", "sample_live"]

logger = logging.getLogger(__name__)


@dataclass
class IndexState:
    """A template and the segments indexed with it (new index files written, not committed)."""

    template: Template
    segments: list[Segment]
    template_record: dict[str, Any] | None
    created: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def discard(self) -> None:
        for path in self.created:
            persist.remove_file(path)
        self.created.clear()


def sample_live(segments: Sequence[Segment], size: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of up to ``size`` live vectors across ``segments`` ([m, d] float32, a copy)."""
    live = [s.n_live for s in segments]
    total = sum(live)
    dim = segments[0].vectors.shape[1] if segments else 0
    if total == 0:
        return np.zeros((0, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out = []
    start = 0
    for seg, n in zip(segments, live):
        sel = pick[(pick >= start) & (pick < start + n)] - start
        start += n
        if sel.size == 0:
            continue
        mask = seg.live_mask()
        rows = sel if mask is None else np.flatnonzero(mask)[sel]
        out.append(np.asarray(seg.vectors[rows], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(out))


def _text(meta: dict[str, Any]) -> str:
    return metadata.validate_metadata([meta], 1)[0]


class IndexBuilding:
    """Training and building segment indexes (a base of :class:`indexes.collection.Collection`)."""

    def rebuild(self, index: str | None = None) -> None:
        """Rebuild from the stored vectors: merge segments dropping removed rows, retrain, re-tune.

        ``index`` switches to another factory string or ``"auto"``; None keeps the requested one.
        The result is used at once and committed by the next :meth:`save`.
        """
        self._check_open(write=True)
        self._rebuild_now(index)

    def _build_state(self, spec: str, segments: Sequence[Segment]) -> IndexState:
        """Train ``spec`` (when it needs it) and write an index for every segment; nothing is committed."""
        t0 = time.perf_counter()
        template = Template(spec, self.dim, self.metric)
        generation = self._generation()
        state = IndexState(template, list(segments), None)
        try:
            if template.needs_training:
                n = sum(s.n_live for s in segments)
                if n < max(template.min_train_size(self._limits), 1):
                    state.seconds = time.perf_counter() - t0
                    state.segments = [s.with_index(None, dict(s.entry, index=None)) for s in segments]
                    return state  # not enough vectors yet: exact search until there are
                cap = max(fi.MAX_POINTS_PER_CENTROID * max(template.nlist, 1), 65_536)
                template = template.trained_on(sample_live(segments, cap))
                name = f"t{generation:06d}-{secrets.token_hex(4)}.faiss"
                path = self.path / name
                state.created.append(path)
                state.template_record = {"file": name, "digest": template.write(path), "trained_on": n}
                state.template = template
            runner = getattr(self, "_runner", None)
            records: dict[str, dict[str, Any]] = {}
            if runner is not None and not template.is_flat:
                from indexes.tasks import index_task

                todo = [s for s in segments if s.rows]
                tasks = [
                    {
                        "folder": str(s.folder),
                        "spec": template.spec,
                        "dim": self.dim,
                        "metric": self.metric,
                        "template_file": str(self.path / state.template_record["file"])
                        if state.template_record
                        else None,
                        "generation": generation,
                        "threads": runner.threads_per_task,
                    }
                    for s in todo
                ]
                for seg, record in zip(todo, runner.map(index_task, tasks)):
                    records[seg.name] = record
                    state.created.append(seg.folder / record["file"])
            out = []
            for seg in segments:
                if template.is_flat or not seg.rows:
                    out.append(seg.with_index(None, dict(seg.entry, index=None)))
                    continue
                if seg.name in records:
                    record = records[seg.name]
                    loaded = template.load_part(seg.folder / record["file"], record["kind"])
                    out.append(seg.with_index(loaded, dict(seg.entry, index=record)))
                    continue
                part = template.build_part(seg.vectors)
                assert part is not None
                record = write_index_record(seg.folder, part, template, generation)
                state.created.append(seg.folder / record["file"])
                del part
                loaded = template.load_part(seg.folder / record["file"], record["kind"])
                out.append(seg.with_index(loaded, dict(seg.entry, index=record)))
            state.segments = out
        except BaseException:
            state.discard()
            raise
        state.seconds = time.perf_counter() - t0
        return state

    def _install(self, state: IndexState, requested: str | None = None) -> None:
        """Make ``state`` the collection's index (committed by the next save)."""
        self._template = state.template
        self._template_record = state.template_record
        self._segments = state.segments
        self._pending.update(state.created)
        if requested is not None:
            self._requested = requested
        assert self._buffer is not None
        old = self._buffer
        fresh = Buffer(self.dim, state.template, self._lexical)
        if old.rows:
            ids, vecs = old.live_arrays()
            fresh.add(ids, vecs, [_text(m) for m in old.meta.get(ids)], old.meta.counts_for(ids))
        old.close()
        self._buffer = fresh
        self._params = {"built_on": len(self), "build_seconds": round(state.seconds, 3)}
        if state.template_record:
            self._params["trained_on"] = int(state.template_record.get("trained_on", 0))
        self._changed()

    def _before_save(self) -> None:
        """Index work that is due before a save: choose (auto), train (enough vectors), tune (count doubled)."""
        n = len(self)
        if self._requested == "auto" and self._choice_due(n) and n > 0:
            self._choose_index()
            return
        template = self._template
        if (
            template.needs_training
            and template.trained is None
            and n >= max(template.min_train_size(self._limits), 1)
        ):
            self._flush_buffer()
            self._install(self._build_state(template.spec, self._segments))
        if self._should_tune():
            self._tune_now()

    def _rebuild_now(self, index: str | None) -> None:
        requested = self._requested if index is None else (index.strip() if isinstance(index, str) else index)
        spec = "Flat" if requested == "auto" else requested
        Template(spec, self.dim, self.metric)  # a bad spec fails before anything changes
        t0 = time.perf_counter()
        self._flush_buffer()
        created: list[Path] = []
        before = (
            list(self._segments),
            self._template,
            self._template_record,
            dict(self._params),
            self._requested,
        )
        try:
            with files.storage_errors(self.path, "rebuild the collection"):
                runs = self._planned_merges(self._segments, force=True)
                segments = self._segments
                if runs:
                    segments, _, _ = self._apply_merges_without_index(segments, runs, created)
                if requested == "auto":
                    self._segments = segments
                    self._pending.update(created)
                    self._requested = "auto"
                    self._auto = None
                    self._choose_index()
                else:
                    state = self._build_state(spec, segments)
                    state.created = created + state.created
                    self._install(state, requested)
                    if self._tunable() and self._template.ready:
                        self._tune_now()
        except BaseException:
            self._segments, self._template, self._template_record, self._params, self._requested = before
            for path in created:
                if path.is_dir():
                    persist.remove_folder(path)
                else:
                    persist.remove_file(path)
            raise
        self._params["build_seconds"] = round(time.perf_counter() - t0, 3)
        self._dirty = True
        logger.info(
            "rebuilt %s (%s) over %d vectors in %.1fs",
            self.path,
            self.index_spec,
            len(self),
            time.perf_counter() - t0,
        )
