"""Checking a collection file by file: what is wrong with one version, and what a repair would do.

:class:`Checker` reads every file a manifest names and checks, for each segment: every block
checksum; that the vectors are finite float32 ``[rows, d]``; that the ids are ascending and within
the recorded range; that SQLite finds its database sound and holds exactly those ids; that the
index labels exactly the segment's rows; that removed ids belong to the segment; and for the
whole collection: the trained template, the stored tuning queries, disjoint id ranges, the item
count, and that no file of a newer version exists (:func:`indexes.persist.newer_files`).

Files are immutable once committed and named uniquely, so a segment found intact is not read again
when the same segment (same entry: same files and digests) is met in a later version: a
:class:`CheckCache` carries those results from one attempt to the next (:mod:`indexes.verify`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import files, persist
from indexes.files import DamagedFileError
from indexes.lexical.config import TextIndex
from indexes.lexical.store import compare_lexicon
from indexes.metadata import MetadataStore
from indexes.template import Template

__all__ = ["CheckCache", "Checker", "Problem", "Report", "SegmentState"]


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


@dataclass
class CheckCache:
    """What earlier attempts found intact (keyed by segment entry or file digest), and the bytes read."""

    intact: dict[str, int] = field(default_factory=dict)  # key -> files it covers
    bytes_read: int = 0


@dataclass
class SegmentState:
    """What was found of one segment (what the repair works from)."""

    entry: dict[str, Any]
    bad_files: dict[str, Any] = field(default_factory=dict)  # file -> verify result
    bad_vectors_rows: np.ndarray | None = None  # rows in damaged blocks (vectors.npy)
    metadata_ok: bool = True
    ids_ok: bool = True
    index_ok: bool = True
    deleted_ok: bool = True
    lexicon_ok: bool = True  # the lexicon of the text fields (absent when none is declared)


class Checker:
    """Checks the version ``manifest`` describes (format 2, or format 1 as :func:`indexes.legacy.as_segments`
    reads it), adding what it finds to ``report``."""

    def __init__(
        self, path: Path, manifest: dict[str, Any], report: Report, cache: CheckCache | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.report = report
        self.cache = CheckCache() if cache is None else cache
        self.dim = int(manifest["dim"])
        self.states: list[SegmentState] = []
        self.template_ok = True
        self.template: Template | None = None
        self.newer: list[str] = []  # files of a newer version than the manifest (see persist.newer_files)
        self.newest = int(manifest.get("version", 0))
        declared = manifest.get("lexical")
        self.lexical: TextIndex | None = None
        if declared:
            try:
                self.lexical = TextIndex.from_dict(declared)
            except (KeyError, TypeError, ValueError) as exc:
                report.problems.append(
                    Problem(
                        persist.MANIFEST,
                        f"its text index declaration cannot be read ({exc})",
                        "cannot be repaired automatically: restore a backup, or declare the text fields "
                        "again (set_text_fields)",
                        repairable=False,
                    )
                )

    def problem(self, file: str, detail: str, repair: str, repairable: bool = True) -> None:
        self.report.problems.append(Problem(file, detail, repair, repairable))

    def check_file(self, rel: str, digest: dict[str, Any] | None) -> Any:
        file = self.path / rel
        self.report.files_checked += 1
        key = f"{rel} {json.dumps(digest, sort_keys=True)}"
        if digest is not None and key in self.cache.intact:
            return None
        if file.exists():
            self.cache.bytes_read += file.stat().st_size
        result = files.verify_file(file, digest, full=True)
        if result is None and digest is not None:
            self.cache.intact[key] = 1
        return result

    def run(self) -> None:
        m = self.manifest
        self.newer, self.newest = persist.newer_files(self.path, m)
        if self.newer:
            self.problem(
                persist.MANIFEST,
                persist.describe_newer(m, self.newer, self.newest),
                "restore the newest manifest.json if you have it; a repair keeps this version, deletes the "
                "newer files and never hands out their ids again",
            )
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

    def _check_lexicon(self, entry: dict[str, Any], state: SegmentState) -> None:
        """The segment's lexicon: present when the collection declares text fields, intact, and holding
        exactly what its metadata gives (it is rebuilt from the metadata when not)."""
        rec = entry.get("lexical") or {}
        if self.lexical is None:
            if rec:
                state.lexicon_ok = False
                self.problem(
                    f"{entry['name']}/{rec['file']}",
                    "a lexicon although the collection declares no text fields",
                    "the segment stops referring to it",
                )
            return
        detail = _lexicon_detail(entry, state, self.lexical, self.path / entry["name"])
        if detail is not None:
            state.lexicon_ok = False
            where = f"{entry['name']}/{rec['file']}" if rec else entry["name"]
            self.problem(where, detail, "the lexicon is rebuilt from the segment's metadata")

    def check_segment(self, entry: dict[str, Any]) -> SegmentState:
        """Check one segment, unless an earlier attempt found this very segment (same entry) intact."""
        key = json.dumps(entry, sort_keys=True)
        if key in self.cache.intact:
            self.report.files_checked += self.cache.intact[key]
            return SegmentState(entry)
        problems, checked = len(self.report.problems), self.report.files_checked
        state = self._check_segment(entry)
        if len(self.report.problems) == problems:
            self.cache.intact[key] = self.report.files_checked - checked
        return state

    def _check_segment(self, entry: dict[str, Any]) -> SegmentState:
        state = SegmentState(entry)
        name = entry["name"]
        folder = self.path / name
        rows = int(entry["rows"])
        for file, digest in (entry.get("files") or {}).items():
            bad = self.check_file(f"{name}/{file}", digest)
            if bad:
                state.bad_files[file] = bad
        for key in ("index", "deleted", "lexical"):
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
        self._check_lexicon(entry, state)
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


def _lexicon_detail(
    entry: dict[str, Any], state: SegmentState, config: TextIndex, folder: Path
) -> str | None:
    rec = entry.get("lexical")
    if not rec:
        return "the segment has no lexicon of the collection's text fields"
    if rec["file"] in state.bad_files:
        return files.describe_damage(state.bad_files[rec["file"]])
    if not state.metadata_ok:
        return None  # the segment is rewritten from what metadata is left; its lexicon with it
    return compare_lexicon(folder / rec["file"], folder / "metadata.sqlite", config, int(entry["rows"]))


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
