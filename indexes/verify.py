"""Check a collection file by file, and repair what its intact parts allow.

:func:`verify` reads every file the manifest names and checks, for each segment: every block
checksum; that the vectors are finite float32 ``[rows, d]``; that the ids are ascending and within
the recorded range; that SQLite finds its database sound and holds exactly those ids; that the
index labels exactly the segment's rows; that removed ids belong to the segment; and for the
whole collection: the trained template, the stored tuning queries, disjoint id ranges and the
item count. It works on a path, so it also reports on a collection too damaged to open.

``repair=True`` takes the writer lock and commits a new version in which

* a damaged or missing segment index is rebuilt from the intact vectors (and a damaged template
  retrained from a sample of them, with every IVF segment re-indexed);
* damaged vectors are recovered from an index that stores them exactly (HNSW, IVF-Flat) when the
  recovered file has the recorded checksum; otherwise the rows in damaged blocks are lost;
* damaged ids are recovered from the metadata (checked against the recorded checksum);
* a segment whose metadata cannot be read loses those items (their vectors are unusable without
  them: every search result carries its metadata);

and it lists what was lost, id by id. Repairs write new segment folders; damaged files are never
modified (the new version stops referring to them). A damaged deletion record cannot be
repaired (which rows were removed is unknown): restore that collection from a backup.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import files, legacy, persist
from indexes.files import DamagedFileError
from indexes.location import local_folder
from indexes.metadata import MetadataStore
from indexes.template import Template

__all__ = ["Problem", "Report", "verify_path"]

logger = logging.getLogger(__name__)


@dataclass
class Problem:
    """One thing found wrong, and what a repair does (or did) about it."""

    file: str  # path relative to the collection
    detail: str
    repair: str  # what --repair does, or "cannot be repaired: ..."
    repairable: bool = True


@dataclass
class Report:
    """What :func:`verify` found (and repaired)."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    repaired: bool = False
    lost_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "problems": [p.__dict__ for p in self.problems],
            "files_checked": self.files_checked,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "repaired": self.repaired,
            "lost_ids": self.lost_ids,
            "notes": self.notes,
        }

    def summary(self) -> str:
        head = (
            f"{self.path}: {self.files_checked} files, {self.bytes_read / 2**20:.1f} MB read in {self.seconds:.2f}s: "
            + ("no damage found" if self.ok else f"{len(self.problems)} problem(s)")
        )
        lines = [head]
        for p in self.problems:
            lines.append(f"  {p.file}: {p.detail}\n    -> {p.repair}")
        for note in self.notes:
            lines.append(f"  {note}")
        if self.lost_ids:
            shown = ", ".join(str(i) for i in self.lost_ids[:20]) + (
                " ..." if len(self.lost_ids) > 20 else ""
            )
            lines.append(f"  lost {len(self.lost_ids)} item(s): ids {shown}")
        return "\n".join(lines)


def verify_path(path: str | Path, repair: bool = False, locked: bool = False) -> Report:
    """Read and check everything of the collection at ``path``; ``repair=True`` commits what can be fixed.

    ``locked`` says the caller already holds the writer lock (an open writable handle).
    """
    path = local_folder(path, "verify_path (retrieval check)")
    t0 = time.perf_counter()
    report = Report(str(path))
    manifest = persist.read_manifest(path)
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
            report.seconds = time.perf_counter() - t0
            return report
    checker = _Checker(path, manifest, report)
    checker.run()
    report.seconds = time.perf_counter() - t0
    if repair and not report.ok:
        lock_fd = None if locked else persist.lock(path)
        try:
            _Repairer(path, manifest, checker, report).run()
        finally:
            persist.unlock(lock_fd)
        report.seconds = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------------------------------------- checking
@dataclass
class _SegmentState:
    entry: dict[str, Any]
    bad_files: dict[str, Any] = field(default_factory=dict)  # file -> verify result
    bad_vectors_rows: np.ndarray | None = None  # rows in damaged blocks (vectors.npy)
    metadata_ok: bool = True
    ids_ok: bool = True
    index_ok: bool = True
    deleted_ok: bool = True


class _Checker:
    def __init__(self, path: Path, manifest: dict[str, Any], report: Report) -> None:
        self.path = path
        self.manifest = manifest
        self.report = report
        self.dim = int(manifest["dim"])
        self.states: list[_SegmentState] = []
        self.template_ok = True
        self.template: Template | None = None

    def problem(self, file: str, detail: str, repair: str, repairable: bool = True) -> None:
        self.report.problems.append(Problem(file, detail, repair, repairable))

    def check_file(self, rel: str, digest: dict[str, Any] | None) -> Any:
        file = self.path / rel
        self.report.files_checked += 1
        if file.exists():
            self.report.bytes_read += file.stat().st_size
        return files.verify_file(file, digest, full=True)

    def run(self) -> None:
        m = self.manifest
        spec = str(m["index_spec"])
        record = m.get("template")
        trained = None
        if record:
            bad = self.check_file(record["file"], record.get("digest"))
            if bad:
                self.template_ok = False
                self.problem(
                    record["file"],
                    files.describe_damage(bad),
                    "the trained index template is retrained from the intact vectors; every IVF segment is re-indexed",
                )
            else:
                try:
                    trained = Template.read(
                        spec, self.dim, str(m["metric"]), self.path / record["file"]
                    ).trained
                except (DamagedFileError, RuntimeError, ValueError) as exc:
                    self.template_ok = False
                    self.problem(
                        record["file"], f"FAISS cannot read it ({exc})", "retrained from the intact vectors"
                    )
        self.template = Template(spec, self.dim, str(m["metric"]), trained)
        if m.get("queries"):
            rec = m["queries"]
            bad = self.check_file(rec["file"], rec.get("digest"))
            if bad:
                self.problem(rec["file"], files.describe_damage(bad), "the stored tuning queries are dropped")
        previous_max = -1
        count = 0
        for entry in m.get("segments") or []:
            state = self.check_segment(entry)
            self.states.append(state)
            if entry["rows"] and int(entry["id_min"]) <= previous_max:
                self.problem(
                    "manifest.json",
                    f"segment {entry['name']} starts at id {entry['id_min']}, at or below the previous segment's last id",
                    "cannot be repaired automatically: restore a backup",
                    repairable=False,
                )
            previous_max = max(previous_max, int(entry["id_max"]))
            count += int(entry["rows"]) - int((entry.get("deleted") or {}).get("rows", 0))
        if previous_max >= int(m["next_id"]):
            self.problem(
                "manifest.json",
                f"next_id {m['next_id']} is not above the largest id {previous_max}",
                "next_id is raised above it",
            )
        if count != int(m["count"]) and int(m["format_version"]) >= 2:
            self.problem(
                "manifest.json",
                f"it says {m['count']} items, its segments hold {count}",
                "the count is recomputed from the segments",
            )

    def check_segment(self, entry: dict[str, Any]) -> _SegmentState:
        state = _SegmentState(entry)
        name = entry["name"]
        folder = self.path / name
        rows = int(entry["rows"])
        for file, digest in (entry.get("files") or {}).items():
            bad = self.check_file(f"{name}/{file}", digest)
            if bad:
                state.bad_files[file] = bad
        for key in ("index", "deleted"):
            rec = entry.get(key)
            if rec:
                bad = self.check_file(f"{name}/{rec['file']}", rec.get("digest"))
                if bad:
                    state.bad_files[rec["file"]] = bad
        # vectors
        vec_bad = state.bad_files.get("vectors.npy")
        vectors = None
        if vec_bad is None:
            try:
                vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
                if vectors.dtype != np.float32 or vectors.shape != (rows, self.dim):
                    raise ValueError(
                        f"it holds {vectors.dtype}{list(vectors.shape)}, expected float32[{rows}, {self.dim}]"
                    )
                for lo in range(0, rows, 1 << 16):
                    if not np.isfinite(np.asarray(vectors[lo : lo + (1 << 16)])).all():
                        raise ValueError("it holds NaN or infinite values")
            except ValueError as exc:
                vec_bad = str(exc)
                state.bad_files["vectors.npy"] = vec_bad
        if vec_bad is not None:
            state.bad_vectors_rows = _damaged_rows(folder / "vectors.npy", vec_bad, rows, self.dim)
            self.problem(
                f"{name}/vectors.npy",
                files.describe_damage(vec_bad)
                if not isinstance(vec_bad, str) or "missing" in vec_bad
                else vec_bad,
                "recovered from the segment's index when it stores exact vectors, else the rows in damaged "
                "blocks are lost",
            )
        # ids
        ids = None
        if "ids.npy" in state.bad_files:
            state.ids_ok = False
            self.problem(
                f"{name}/ids.npy",
                files.describe_damage(state.bad_files["ids.npy"]),
                "recovered from the metadata",
            )
        else:
            try:
                ids = np.load(folder / "ids.npy", allow_pickle=False)
                if ids.dtype != np.int64 or ids.shape != (rows,):
                    raise ValueError(f"it holds {ids.dtype}{list(ids.shape)}, expected int64[{rows}]")
                if rows and (
                    (np.diff(ids) <= 0).any()
                    or int(ids[0]) != int(entry["id_min"])
                    or int(ids[-1]) != int(entry["id_max"])
                ):
                    raise ValueError("its ids are not ascending within the recorded range")
            except ValueError as exc:
                state.ids_ok = False
                ids = None
                self.problem(f"{name}/ids.npy", str(exc), "recovered from the metadata")
        # metadata
        if "metadata.sqlite" in state.bad_files:
            state.metadata_ok = False
            self.problem(
                f"{name}/metadata.sqlite",
                files.describe_damage(state.bad_files["metadata.sqlite"]),
                "the items whose metadata cannot be read are lost (listed)",
            )
        else:
            try:
                meta = MetadataStore.open_read_only(folder / "metadata.sqlite")
                try:
                    trouble = meta.integrity_problem()
                    stored = meta.all_ids()
                finally:
                    meta.close()
                if trouble:
                    raise ValueError(f"SQLite reports: {trouble}")
                if ids is not None and not np.array_equal(stored, ids):
                    raise ValueError(f"it holds {stored.size} ids that differ from ids.npy ({rows} rows)")
            except Exception as exc:  # sqlite3.DatabaseError and the checks above
                state.metadata_ok = False
                self.problem(
                    f"{name}/metadata.sqlite",
                    str(exc),
                    "the items whose metadata cannot be read are lost (listed)",
                )
        # index
        rec = entry.get("index")
        if rec:
            if rec["file"] in state.bad_files:
                state.index_ok = False
                self.problem(
                    f"{name}/{rec['file']}",
                    files.describe_damage(state.bad_files[rec["file"]]),
                    "rebuilt from the segment's vectors",
                )
            else:
                try:
                    _check_index(folder, rec, rows, self.template)
                except Exception as exc:
                    state.index_ok = False
                    self.problem(f"{name}/{rec['file']}", str(exc), "rebuilt from the segment's vectors")
        # deleted ids
        rec = entry.get("deleted")
        if rec:
            if rec["file"] in state.bad_files:
                state.deleted_ok = False
                self.problem(
                    f"{name}/{rec['file']}",
                    files.describe_damage(state.bad_files[rec["file"]]),
                    "cannot be repaired: which of the segment's rows were removed is unknown; restore a backup",
                    repairable=False,
                )
            elif (
                ids is not None
                and rec.get("labels", "rows") == "rows"
                and not str(entry["name"]).startswith("v")
            ):
                try:
                    deleted = np.load(folder / rec["file"], allow_pickle=False)
                except (ValueError, OSError) as exc:
                    deleted = None
                    state.deleted_ok = False
                    self.problem(
                        f"{name}/{rec['file']}",
                        f"it is not a readable .npy file ({exc})",
                        "cannot be repaired: which of the segment's rows were removed is unknown; "
                        "restore a backup",
                        repairable=False,
                    )
                if deleted is None:
                    pass
                elif deleted.size != int(rec["ids"]) or not np.isin(deleted, ids).all():
                    state.deleted_ok = False
                    self.problem(
                        f"{name}/{rec['file']}",
                        "it lists ids that are not in the segment",
                        "cannot be repaired: restore a backup",
                        repairable=False,
                    )
        return state


def _check_index(folder: Path, rec: dict[str, Any], rows: int, template: Template | None) -> None:
    from indexes import faiss_index as fi

    path = folder / rec["file"]
    if rec["kind"] == "lists":
        lists = fi.read_lists(path)
        total = 0
        for i in range(lists.nlist):
            n = lists.list_size(i)
            if n:
                labels = faiss.rev_swig_ptr(lists.get_ids(i), n).copy()
                lists.release_ids(i, lists.get_ids(i))
                if labels.min() < 0 or labels.max() >= rows:
                    raise ValueError(f"list {i} holds row {int(labels.max())}, the segment has {rows} rows")
                total += n
        if total != rows:
            raise ValueError(f"it indexes {total} vectors, the segment has {rows} rows")
        return
    index = fi.read_index(path, mmap=True, ivf=bool(rec.get("ivf")))
    expected = rows if rec.get("labels", "rows") == "rows" else int(rec.get("ntotal", index.ntotal))
    if index.ntotal != expected:
        raise ValueError(f"it indexes {index.ntotal} vectors, expected {expected}")


def _damaged_rows(path: Path, result: Any, rows: int, dim: int) -> np.ndarray:
    """Rows whose bytes fall in a damaged block of a vectors file (all rows when it cannot be told)."""
    if isinstance(result, str) or not path.exists():
        return np.arange(rows)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(fh)
            else:
                np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except Exception:  # the header itself is unreadable: nothing can be located
        return np.arange(rows)
    row_bytes = dim * 4
    lost: list[np.ndarray] = []
    for block in result:
        if block.start < offset:
            return np.arange(rows)  # the header itself is damaged
        lo = (block.start - offset) // row_bytes
        hi = min(rows, -(-(block.stop - offset) // row_bytes))
        lost.append(np.arange(lo, hi))
    return np.unique(np.concatenate(lost)) if lost else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- repairing
class _Repairer:
    def __init__(self, path: Path, manifest: dict[str, Any], checker: _Checker, report: Report) -> None:
        self.path = path
        self.manifest = manifest
        self.checker = checker
        self.report = report
        self.dim = int(manifest["dim"])
        self.metric = str(manifest["metric"])
        self.version = int(manifest.get("version", 0)) + 1
        self.created: list[Path] = []

    def run(self) -> None:
        if any(not p.repairable for p in self.report.problems):
            self.report.notes.append("nothing was repaired: some damage cannot be repaired (see above)")
            return
        try:
            self._repair()
        except BaseException:
            for p in self.created:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            raise

    def _repair(self) -> None:
        m = dict(self.manifest)
        template = self.checker.template
        assert template is not None
        entries: list[dict[str, Any]] = []
        retrain = not self.checker.template_ok
        for state in self.checker.states:
            entry = self._repair_segment(state, template)
            if entry is not None:
                entries.append(entry)
        if retrain:
            template, record = self._retrain(template, entries)
            m["template"] = record
            entries = [
                self._reindex(e, template) if (e.get("index") or {}).get("kind") == "lists" else e
                for e in entries
            ]
        if m.get("queries"):
            rec = m["queries"]
            if files.verify_file(self.path / rec["file"], rec.get("digest")):
                m["queries"] = None
        m["segments"] = entries
        m["count"] = sum(int(e["rows"]) - int((e.get("deleted") or {}).get("rows", 0)) for e in entries)
        top = max([int(e["id_max"]) for e in entries if e["rows"]] + [-1])
        m["next_id"] = max(int(m["next_id"]), top + 1)
        m["version"] = self.version
        m["format_version"] = persist.FORMAT_VERSION
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for entry in entries:
            files.fsync_dir(self.path / entry["name"])
        files.fsync_dir(self.path)
        durable = persist.write_manifest(self.path, m)
        self.report.repaired = True
        self.report.lost_ids = sorted(self.report.lost_ids)
        if durable:
            persist.collect_garbage(self.path, [m])

    def _new_folder(self) -> Path:
        folder = self.path / f"s{self.version:06d}-{secrets.token_hex(4)}"
        folder.mkdir()
        self.created.append(folder)
        return folder

    def _repair_segment(self, state: _SegmentState, template: Template) -> dict[str, Any] | None:
        entry = state.entry
        name = entry["name"]
        folder = self.path / name
        rows = int(entry["rows"])
        touched = bool(state.bad_files) or not (state.ids_ok and state.metadata_ok and state.index_ok)
        if not touched:
            return entry
        ids = self._ids(state)
        if ids is None:
            self._lose(
                np.arange(int(entry["id_min"]), int(entry["id_max"]) + 1),
                f"segment {name}: ids and metadata both lost",
            )
            return None
        vectors, lost_rows = self._vectors(state, template)
        lost = set(lost_rows.tolist())
        if not state.metadata_ok:
            readable = _readable_metadata(folder / "metadata.sqlite")
            missing = np.flatnonzero(~np.isin(ids, np.array(sorted(readable), dtype=np.int64)))
            lost.update(missing.tolist())
        else:
            readable = None
        deleted = np.zeros(0, dtype=np.int64)
        if entry.get("deleted"):
            deleted = np.asarray(
                np.load(folder / entry["deleted"]["file"], allow_pickle=False), dtype=np.int64
            )
        keep = np.ones(rows, dtype=bool)
        if lost:
            keep[np.array(sorted(lost), dtype=np.int64)] = False
        self._lose(ids[~keep & ~np.isin(ids, deleted)], None)
        keep &= ~np.isin(ids, deleted)
        if keep.all() and vectors is None and readable is None and state.ids_ok:
            # only the index is damaged: write a new index generation in the same folder
            return self._reindex(entry, template)
        return self._rewrite(entry, ids, keep, vectors, readable, template)

    def _ids(self, state: _SegmentState) -> np.ndarray | None:
        folder = self.path / state.entry["name"]
        if state.ids_ok:
            return np.load(folder / "ids.npy", allow_pickle=False)
        if not state.metadata_ok:
            return None
        meta = MetadataStore.open_read_only(folder / "metadata.sqlite")
        try:
            ids = meta.all_ids()
        finally:
            meta.close()
        if ids.size != int(state.entry["rows"]):
            return None
        digest = files.digest_bytes(_npy_bytes(ids))
        recorded = (state.entry.get("files") or {}).get("ids.npy")
        if recorded is not None and digest["crc32"] != recorded["crc32"]:
            self.report.notes.append(
                f"{state.entry['name']}/ids.npy: ids recovered from the metadata differ from what was written"
            )
        else:
            self.report.notes.append(
                f"{state.entry['name']}/ids.npy: recovered from the metadata (checksum matches)"
            )
        return ids

    def _vectors(self, state: _SegmentState, template: Template) -> tuple[np.ndarray | None, np.ndarray]:
        """(recovered vectors or None when the file is fine, rows lost)."""
        if state.bad_vectors_rows is None:
            return None, np.zeros(0, dtype=np.int64)
        entry = state.entry
        folder = self.path / entry["name"]
        rows = int(entry["rows"])
        recovered = (
            _from_index(folder, entry.get("index"), rows, self.dim, template) if state.index_ok else None
        )
        if recovered is not None:
            digest = files.digest_bytes(_npy_bytes(recovered))
            recorded = (entry.get("files") or {}).get("vectors.npy")
            if recorded is None or digest["crc32"] == recorded["crc32"]:
                self.report.notes.append(
                    f"{entry['name']}/vectors.npy: recovered exactly from the segment's index"
                )
                return recovered, np.zeros(0, dtype=np.int64)
        lost = state.bad_vectors_rows
        if folder.joinpath("vectors.npy").exists() and lost.size < rows:
            src = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
            if src.shape == (rows, self.dim):
                out = np.array(src, dtype=np.float32)
                return out, lost
        return np.zeros((rows, self.dim), dtype=np.float32), np.arange(rows)

    def _lose(self, ids: np.ndarray, note: str | None) -> None:
        self.report.lost_ids.extend(int(i) for i in ids)
        if note:
            self.report.notes.append(note)

    def _rewrite(
        self,
        entry: dict[str, Any],
        ids: np.ndarray,
        keep: np.ndarray,
        vectors: np.ndarray | None,
        readable: dict[int, str] | None,
        template: Template,
    ) -> dict[str, Any] | None:
        from indexes.segment import write_segment

        if not keep.any():
            return None
        src = self.path / entry["name"]
        if vectors is None:
            vectors = np.load(src / "vectors.npy", mmap_mode="r", allow_pickle=False)
        new_ids = ids[keep]
        name = f"s{self.version:06d}-{secrets.token_hex(4)}"
        folder = self.path / name
        self.created.append(folder)
        if readable is None:
            meta = MetadataStore.open_read_only(src / "metadata.sqlite")
            try:
                texts = [json.dumps(d, ensure_ascii=False, separators=(",", ":")) for d in meta.get(new_ids)]
            finally:
                meta.close()
        else:
            texts = [readable[int(i)] for i in new_ids]
        vecs = np.asarray(vectors[np.flatnonzero(keep)], dtype=np.float32)
        entry_new = write_segment(
            self.path, name, new_ids, vecs, None, template, None, self.version, texts=texts
        )
        self.report.notes.append(
            f"segment {entry['name']} rewritten as {name} ({int(keep.sum())} of {entry['rows']} rows kept)"
        )
        return entry_new

    def _reindex(self, entry: dict[str, Any], template: Template) -> dict[str, Any]:
        from indexes.segment import write_index_record

        folder = self.path / entry["name"]
        if not template.ready:
            return dict(entry, index=None)
        vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        part = template.build_part(vectors)
        assert part is not None
        record = write_index_record(folder, part, template, self.version)
        self.created.append(folder / record["file"])
        self.report.notes.append(f"segment {entry['name']}: index rebuilt from its vectors")
        return dict(entry, index=record)

    def _retrain(self, template: Template, entries: list[dict[str, Any]]) -> tuple[Template, dict[str, Any]]:
        from indexes import faiss_index as fi

        samples = []
        for e in entries:
            v = np.load(self.path / e["name"] / "vectors.npy", mmap_mode="r", allow_pickle=False)
            if v.shape[0]:
                pick = np.sort(
                    np.random.default_rng(0).choice(v.shape[0], size=min(v.shape[0], 65_536), replace=False)
                )
                samples.append(np.asarray(v[pick], dtype=np.float32))
        sample = np.concatenate(samples) if samples else np.zeros((0, self.dim), dtype=np.float32)
        cap = max(fi.MAX_POINTS_PER_CENTROID * max(template.nlist, 1), 65_536)
        if sample.shape[0] > cap:
            sample = sample[np.sort(np.random.default_rng(1).choice(sample.shape[0], cap, replace=False))]
        fresh = Template(template.spec, self.dim, self.metric).trained_on(sample)
        name = f"t{self.version:06d}-{secrets.token_hex(4)}.faiss"
        self.created.append(self.path / name)
        digest = fresh.write(self.path / name)
        self.report.notes.append(f"index template retrained on {sample.shape[0]} vectors")
        return fresh, {"file": name, "digest": digest, "trained_on": int(sample.shape[0])}


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_index(
    folder: Path, rec: dict[str, Any] | None, rows: int, dim: int, template: Template
) -> np.ndarray | None:
    """Exact vectors [rows, d] read back from an index that stores them (HNSW / Flat storage, IVF-Flat lists)."""
    from indexes import faiss_index as fi

    if not rec:
        return None
    path = folder / rec["file"]
    try:
        if rec["kind"] == "lists":
            ivf = faiss.extract_index_ivf(template.trained) if template.trained is not None else None
            if ivf is None or fi.has_codes(template.trained) or ivf.code_size != dim * 4:
                return None
            lists = fi.read_lists(path)
            out = np.zeros((rows, dim), dtype=np.float32)
            for i in range(lists.nlist):
                n = lists.list_size(i)
                if n:
                    labels = faiss.rev_swig_ptr(lists.get_ids(i), n).copy()
                    codes = (
                        faiss.rev_swig_ptr(lists.get_codes(i), n * dim * 4)
                        .copy()
                        .view(np.float32)
                        .reshape(n, dim)
                    )
                    out[labels] = codes
            return out
        if rec.get("labels", "rows") != "rows":
            return None
        index = fi.read_index(path)
        if fi.has_codes(index):
            return None
        return index.reconstruct_n(0, rows)
    except Exception:  # the index cannot give them back: the vectors are lost
        return None


def _readable_metadata(path: Path) -> dict[int, str]:
    """id -> JSON text of every item SQLite can still read from a damaged database (may be empty)."""
    import sqlite3

    out: dict[int, str] = {}
    if not path.exists():
        return out
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro&immutable=1", uri=True)
    except sqlite3.DatabaseError:
        return out
    try:
        for row in con.execute("SELECT id, data FROM items ORDER BY id"):
            out[int(row[0])] = str(row[1])
    except sqlite3.DatabaseError:
        pass
    finally:
        con.close()
    return out
