"""Work a collection does on its segments: train, (re)build indexes, merge, tune, choose the index.

:class:`CollectionMaintenance` is a base class of :class:`indexes.collection.Collection`, which
supplies the state it works on (segments, template, buffer, params, manifest). Its methods change
that state only by swapping whole values (segment lists, templates) once the new files are
written, so a failure part-way leaves the handle as it was (files written so far are deleted).
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

from indexes import auto, checks, compaction, files, legacy, metadata, persist, planner
from indexes import faiss_index as fi
from indexes.files import DamagedFileError
from indexes.segment import Buffer, Segment, write_index_record
from indexes.template import Template

__all__ = ["GOOD_SPEEDUP", "CollectionMaintenance", "IndexState"]

logger = logging.getLogger(__name__)

GOOD_SPEEDUP = 10.0  # index="auto" stops trying candidates once one is this much faster than exact search
MODALITY_FIELD = "modality"  # items carrying several values of it are tuned across them (text->image, ...)


# ---------------------------------------------------------------------------------------------- states
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


# ---------------------------------------------------------------------------------------------- save hooks
# ---------------------------------------------------------------------------------------------- query sets
# ---------------------------------------------------------------------------------------------- tuning
# ---------------------------------------------------------------------------------------------- auto
# ---------------------------------------------------------------------------------------------- merging
def _entry_for(
    folder: Path, vec_digest: Any, id_digest: Any, ids: np.ndarray, counts: dict[str, int]
) -> dict[str, Any]:
    files.fsync_file(folder / "metadata.sqlite")
    rows = int(ids.shape[0])
    return {
        "name": folder.name,
        "rows": rows,
        "id_min": int(ids[0]) if rows else -1,
        "id_max": int(ids[-1]) if rows else -1,
        "files": {
            "vectors.npy": vec_digest,
            "ids.npy": id_digest,
            "metadata.sqlite": files.digest_file(folder / "metadata.sqlite"),
        },
        "fields": dict(sorted(counts.items())),
        "index": None,
        "deleted": None,
    }


def _bytes_of(seg: Segment) -> int:
    """Bytes a merge writes for a segment: its recorded file sizes, in proportion of its live rows."""
    total = 0
    for digest in (seg.entry.get("files") or {}).values():
        total += int(digest["size"]) if digest else seg.rows * (seg.vectors.shape[1] * 4 + 64)
    record = seg.entry.get("index") or {}
    if record.get("digest"):
        total += int(record["digest"]["size"])
    return int(total * seg.n_live / max(seg.rows, 1))  # removed rows are not copied


# ---------------------------------------------------------------------------------------------- format 1


class CollectionMaintenance:
    """What a collection does to its segments (a base of :class:`indexes.collection.Collection`)."""

    def _generation(self) -> int:
        return int(self._manifest.get("version", 0)) + 1

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
        fresh = Buffer(self.dim, state.template)
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

    def _should_tune(self) -> bool:
        n = len(self)
        if not self._template.ready or n < self._limits.tune_min:
            return False
        return n >= 2 * int(self._params.get("tuned_on", 0))

    def _query_sets(
        self, queries: Any = None, where: dict[str, Any] | None = None, k: int = 10
    ) -> list[auto.QuerySet]:
        """The queries tuning measures with (see :meth:`Collection.tune`), with exact neighbours filled in."""
        rng = np.random.default_rng(0)
        parts = self._parts()
        size = self._limits.tune_queries
        sets: list[auto.QuerySet] = []
        if queries is not None:
            q = self._as_vectors(queries, "queries", allow_1d=False)
            sets = [auto.QuerySet("given", q, where)]
        elif self._queries_record:
            sets = self._load_queries()
        else:
            values = self._modality_values()
            if len(values) >= 2:
                for value in values:
                    match = self._match({MODALITY_FIELD: value}, parts)
                    if match.ids.size == 0:
                        continue
                    pick = np.sort(rng.choice(match.ids, size=min(size, match.ids.size), replace=False))
                    others = [v for v in values if v != value]
                    target: Any = others[0] if len(others) == 1 else {"ne": value}
                    sets.append(
                        auto.QuerySet(
                            f"{value}->{others[0] if len(others) == 1 else 'others'}",
                            planner.gather(parts, pick),
                            {MODALITY_FIELD: target},
                        )
                    )
            if not sets:
                ids = self.ids()
                pick = np.sort(rng.choice(ids, size=min(size, ids.size), replace=False))
                sets = [auto.QuerySet("stored vectors", planner.gather(parts, pick), None, self_ids=pick)]
        exact_view = self._view(template=Template("Flat", self.dim, self.metric))
        for qs in sets:
            _, found = self._search(qs.queries, k + 1, qs.where, 0, exact_view)
            self_ids = qs.self_ids if qs.self_ids is not None else np.full(qs.queries.shape[0], -2)
            qs.truth = auto.drop_self(found, self_ids, k)
        return sets

    def _modality_values(self) -> list[Any]:
        if MODALITY_FIELD not in self.fields():
            return []
        values: set[Any] = set()
        for part in self._parts():
            values.update(part.meta.distinct(MODALITY_FIELD, limit=8))
        return sorted(v for v in values if isinstance(v, (str, int)) and not isinstance(v, bool))

    def _store_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None:
        if queries is None:
            self._queries_record = None
            self._changed()
            return
        if not isinstance(queries, dict) or not queries:
            raise ValueError(
                "queries must be a dict {name: (vectors [q, d], where or None)}, or None to forget them"
            )
        arrays: dict[str, np.ndarray] = {}
        described = []
        for i, (name, value) in enumerate(queries.items()):
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(
                    f"queries[{name!r}] must be a (vectors, where) pair, received {type(value).__name__}"
                )
            q = self._as_vectors(value[0], f"queries[{name!r}]", allow_1d=False)[
                : 5 * self._limits.tune_queries
            ]
            if value[1] is not None:
                metadata.compile_where(
                    value[1], self.fields()
                )  # a bad filter fails now, not at the next save
            arrays[f"q{i}"] = q
            described.append({"name": str(name), "where": value[1]})
        import io
        import json

        buf = io.BytesIO()
        np.savez(buf, names=np.array(json.dumps(described)), **arrays)
        name = f"q{self._generation():06d}-{secrets.token_hex(4)}.npz"
        path = self.path / name
        digest = files.write_bytes(path, buf.getvalue())
        self._pending.add(path)
        self._queries_record = {"file": name, "digest": digest, "sets": [d["name"] for d in described]}
        self._changed()

    def _load_queries(self) -> list[auto.QuerySet]:
        import json

        record = self._queries_record
        assert record is not None
        path = self.path / record["file"]
        bad = files.verify_file(path, record.get("digest"))
        if bad:
            raise DamagedFileError(path, files.describe_damage(bad))
        with np.load(path, allow_pickle=False) as data:
            described = json.loads(str(data["names"]))
            return [
                auto.QuerySet(d["name"], data[f"q{i}"][: self._limits.tune_queries], d["where"])
                for i, d in enumerate(described)
            ]

    def _tune_now(
        self,
        recall_target: float | None = None,
        queries: Any = None,
        k: int = 10,
        where: dict[str, Any] | None = None,
        view: planner.View | None = None,
    ) -> dict[str, Any]:
        target = self._recall_target if recall_target is None else float(recall_target)
        if not 0 < target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], received {recall_target!r}")
        k = checks.check_int("k", k, 1)
        if not self._template.ready or len(self) <= k + 1:
            raise ValueError(
                f"cannot tune: the collection holds {len(self)} vectors and its index is not trained yet"
            )
        chosen, ann_t, exact_t, sets = self._tune_view(
            self._view() if view is None else view, target, queries, where, k
        )
        for key in ("nprobe", "efSearch", "refine"):
            self._params.pop(key, None)
        chosen.pop("reached", None)
        self._params.update(
            chosen,
            tuned_on=len(self),
            tune_queries=int(sum(qs.queries.shape[0] for qs in sets)),
            tune_k=k,
            ms_per_query=ann_t.as_dict(),
            exact_ms_per_query=exact_t.as_dict(),
            speedup=round(exact_t.batch / max(ann_t.batch, 1e-12), 2),
        )
        if ann_t.batch >= exact_t.batch and self._template.kind != "flat":
            (logger.warning if len(self) > self._limits.flat_max else logger.info)(
                "%s tuned to recall %.3f takes %.3f ms per query, exact search %.3f ms: index='Flat' (or 'auto', "
                "which falls back to exact search) would be faster on %s",
                self._template.spec,
                chosen.get("tuned_recall", 0.0),
                ann_t.batch * 1e3,
                exact_t.batch * 1e3,
                self.path,
            )
        if not self._read_only:
            self._dirty = True
        return dict(self._params)

    def _tune_view(
        self,
        view: planner.View,
        target: float,
        queries: Any,
        where: dict[str, Any] | None,
        k: int,
        give_up_slower: bool = False,
    ) -> tuple[dict[str, Any], auto.Timing, auto.Timing, list[auto.QuerySet]]:
        """Tune ``view``'s index; ``give_up_slower`` stops walking a knob once it is slower than exact search
        (what ``auto`` does: such an index is dropped anyway)."""
        sets = self._query_sets(queries, where, k)
        exact_view = self._view(parts=view.parts, template=Template("Flat", self.dim, self.metric))
        exact_t = auto.time_search(lambda q, w: self._search(q, k, w, 0, exact_view), sets)

        def run(params: dict[str, Any], qs: auto.QuerySet, kk: int) -> np.ndarray:
            v = self._view(parts=view.parts, template=view.template, knobs=params)
            return self._search(qs.queries, kk, qs.where, int(params.get("refine", 0)), v)[1]

        template = view.template
        limit = exact_t.batch if give_up_slower else None
        chosen = auto.tune(template.kind, template.nlist, template.has_codes(), run, sets, k, target, limit)
        knobs = {key: chosen[key] for key in ("nprobe", "efSearch", "refine") if key in chosen}
        tuned_view = self._view(parts=view.parts, template=template, knobs=knobs)
        refine = int(knobs.get("refine", 0))
        ann_t = auto.time_search(lambda q, w: self._search(q, k, w, refine, tuned_view), sets)
        return chosen, ann_t, exact_t, sets

    def _choose_index(self) -> None:
        """``index="auto"``: measure candidate indexes against exact search and keep the fastest one that
        reaches the recall target, faster than exact search in batches and one query at a time; none
        qualifying means exact search (Flat). The decision is recorded in ``info()["auto"]``."""
        self._flush_buffer()
        n = len(self)
        cands = auto.candidates(n, self.dim, self._budget, self._limits)
        record: dict[str, Any] = {
            "n": n,
            "candidates": cands,
            "tried": [],
            "decided": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if cands == ["Flat"] or n <= 10 + 1:
            if self._template.spec != "Flat" or any(s.index is not None for s in self._segments):
                self._install(self._build_state("Flat", self._segments))
            record.update(chosen="Flat", reason=f"{n} vectors: exact search is fast at this size")
            self._auto = record
            self._changed()
            return
        t0 = time.perf_counter()
        target = self._recall_target
        best: tuple[IndexState, dict[str, Any], auto.Timing] | None = None
        exact_t: auto.Timing | None = None
        for spec in cands:
            if (
                best is not None
                and exact_t is not None
                and exact_t.batch / max(best[2].batch, 1e-12) >= GOOD_SPEEDUP
            ):
                break
            state = self._build_state(spec, self._segments)
            view = self._view(parts=state.segments, template=state.template, knobs={})
            if not state.template.ready:
                state.discard()
                record["tried"].append({"spec": spec, "verdict": "not enough vectors to train"})
                continue
            chosen, ann_t, exact_t, _ = self._tune_view(view, target, None, None, 10, give_up_slower=True)
            ok = (
                bool(chosen.get("reached")) and ann_t.batch < exact_t.batch and ann_t.single <= exact_t.single
            )
            verdict = (
                "kept"
                if ok
                else (
                    "recall target not reached" if not chosen.get("reached") else "slower than exact search"
                )
            )
            record["tried"].append(
                {
                    "spec": spec,
                    "build_seconds": round(state.seconds, 2),
                    "params": {key: chosen[key] for key in ("nprobe", "efSearch", "refine") if key in chosen},
                    "recall": chosen.get("tuned_recall"),
                    "recall_by_queries": chosen.get("tuned_recall_by_queries"),
                    **ann_t.as_dict(),
                    "speedup": round(exact_t.batch / max(ann_t.batch, 1e-12), 2),
                    "verdict": verdict,
                }
            )
            logger.info("auto: %s %s (%s)", spec, verdict, record["tried"][-1])
            if ok and (best is None or ann_t.batch < best[2].batch):
                if best is not None:
                    best[0].discard()
                best = (state, chosen, ann_t)
            else:
                state.discard()
        if exact_t is not None:
            record["exact"] = exact_t.as_dict()
        if best is None:
            self._install(self._build_state("Flat", self._segments))
            record.update(
                chosen="Flat",
                reason="no candidate reached the recall target faster than exact search: exact search is used",
            )
            logger.info("auto: %s falls back to exact search (%s)", self.path, record["tried"])
        else:
            state, chosen, ann_t = best
            self._install(state)
            chosen.pop("reached", None)
            self._params.update(
                chosen,
                tuned_on=n,
                ms_per_query=ann_t.as_dict(),
                exact_ms_per_query=record["exact"],
                speedup=round(exact_t.batch / max(ann_t.batch, 1e-12), 2) if exact_t else None,
            )
            record.update(chosen=state.template.spec, reason="fastest candidate reaching the recall target")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        self._auto = record
        self._changed()

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
        masks = [s.live_mask() for s in segments]
        # split the live rows into chunks of at most max_rows, in order: [(segment, row lo, row hi)] per chunk
        chunks: list[list[tuple[int, int, int]]] = [[]]
        room = max_rows
        for i, seg in enumerate(segments):
            rows = np.arange(seg.rows) if masks[i] is None else np.flatnonzero(masks[i])
            start = 0
            while start < rows.size:
                take = min(room, rows.size - start)
                chunks[-1].append((i, int(rows[start]), int(rows[start + take - 1]) + 1))
                start += take
                room -= take
                if room == 0:
                    chunks.append([])
                    room = max_rows
        out: list[Segment] = []
        generation = self._generation()
        for chunk in chunks:
            total = 0
            for i, lo, hi in chunk:
                m = masks[i]
                total += hi - lo if m is None else int(m[lo:hi].sum())
            if total == 0:
                continue
            name = f"s{generation:06d}-{secrets.token_hex(4)}"
            folder = self.path / name
            folder.mkdir()
            created.append(folder)
            vec_out = files.NpyWriter(folder / "vectors.npy", np.float32, (total, self.dim))
            id_out = files.NpyWriter(folder / "ids.npy", np.int64, (total,))
            keep: list[tuple[Path, np.ndarray]] = []
            with vec_out, id_out:
                for i, lo, hi in chunk:
                    seg, m = segments[i], masks[i]
                    for b in range(lo, hi, 1 << 16):
                        e = min(hi, b + (1 << 16))
                        rows = np.arange(b, e) if m is None else b + np.flatnonzero(m[b:e])
                        vec_out.write(np.asarray(seg.vectors[rows], dtype=np.float32))
                        id_out.write(np.asarray(seg.ids[rows]))
                    rows = np.arange(lo, hi) if m is None else lo + np.flatnonzero(m[lo:hi])
                    keep.append((seg.folder / "metadata.sqlite", np.asarray(seg.ids[rows])))
            counts = metadata.merge_files(folder / "metadata.sqlite", keep)
            vectors = np.load(folder / "vectors.npy", mmap_mode="r")
            ids = np.load(folder / "ids.npy", mmap_mode="r")
            entry = _entry_for(folder, vec_out.digest, id_out.digest, ids, counts)
            use = template if template is not None and template.ready else None
            if use is not None:
                part = use.build_part(vectors)
                if part is not None:
                    entry["index"] = write_index_record(folder, part, use, generation)
            files.fsync_dir(folder)
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

    def _tunable(self) -> bool:
        return self._template.ready and len(self) >= self._limits.tune_min

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

    def _convert_legacy(self) -> None:
        """Record checksums of a format-1 collection, extract its trained template, and commit as format 2."""
        manifest = legacy.checksum(self.path, self._manifest)
        template = self._template
        if template.needs_training and manifest.get("segments"):
            trained = legacy.template_of(
                self.path, manifest["segments"][0], template.spec, self.dim, self.metric
            )
            if trained is not None:
                template = Template(template.spec, self.dim, self.metric, trained)
                name = f"t{self._generation():06d}-{secrets.token_hex(4)}.faiss"
                digest = template.write(self.path / name)
                self._template_record = {
                    "file": name,
                    "digest": digest,
                    "trained_on": int(self._params.get("trained_on", 0)),
                }
        self._template = template
        segments = []
        for seg, entry in zip(self._segments, manifest.get("segments") or []):
            segments.append(seg.with_deleted(seg.deleted, entry))
        self._segments = segments
        assert self._buffer is not None
        self._buffer.close()
        self._buffer = Buffer(self.dim, template)
        if self._requested == "auto":
            self._auto = {
                "n": len(self),
                "chosen": template.spec,
                "reason": "kept from a format-1 collection",
            }
        new = self._manifest_for(self._generation(), segments)
        self._commit(new, previous=None)
        logger.info("converted collection %s to format 2 (checksums recorded, no data rewritten)", self.path)
