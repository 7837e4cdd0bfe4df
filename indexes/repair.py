"""Repairing a collection from what its intact parts allow, as :class:`indexes.checking.Checker` found it.

:class:`Repairer` commits a new version (under the writer lock, taken by :func:`indexes.verify.verify_path`)
in which

* a damaged or missing segment index is rebuilt from the intact vectors (and a damaged template
  retrained from a sample of them, with every IVF segment re-indexed);
* damaged vectors are recovered from an index that stores them exactly (HNSW, IVF-Flat) when the
  recovered file has the recorded checksum; otherwise the rows in damaged blocks are lost;
* damaged ids are recovered from the metadata (checked against the recorded checksum);
* a segment whose metadata cannot be read loses those items (their vectors are unusable without
  them: every search result carries its metadata);
* files of a newer version than the manifest (a manifest replaced by an older copy) are deleted,
  and ids are never handed out again below the largest id they held;

and it lists what was lost, id by id. Repairs write new segment folders; damaged files are never
modified (the new version stops referring to them). A damaged deletion record cannot be
repaired (which rows were removed is unknown): restore that collection from a backup.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import files, persist
from indexes.checking import Checker, Report, SegmentState
from indexes.metadata import MetadataStore
from indexes.template import Template

__all__ = ["Repairer"]


class Repairer:
    def __init__(self, path: Path, manifest: dict[str, Any], checker: Checker, report: Report) -> None:
        self.path = path
        self.manifest = manifest
        self.checker = checker
        self.report = report
        self.dim = int(manifest["dim"])
        self.metric = str(manifest["metric"])
        # versions never go back, not even past files of a newer version the manifest lost track of
        newest = max(int(manifest.get("version", 0)), checker.newest, persist.read_committed(path))
        self.version = newest + 1
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
        top = max([int(e["id_max"]) for e in entries if e["rows"]] + [self._newer_top_id()])
        m["next_id"] = max(int(m["next_id"]), top + 1)
        m["version"] = self.version
        m["format_version"] = persist.FORMAT_VERSION
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for entry in entries:
            files.fsync_dir(self.path / entry["name"])
        files.fsync_dir(self.path)
        current = persist.read_manifest(self.path)
        if current.get("version") != self.manifest.get("version"):  # the caller holds the lock: a bug if so
            raise persist.CollectionBusyError(
                f"collection {self.path} changed during the repair (version {self.manifest.get('version')} "
                f"became {current.get('version')}): nothing was committed; run the repair again"
            )
        durable = persist.write_manifest(self.path, m)
        self.report.repaired = True
        self.report.lost_ids = sorted(self.report.lost_ids)
        if durable:
            persist.collect_garbage(self.path, [m])

    def _newer_top_id(self) -> int:
        """The largest id held by segments of a newer version than the manifest (-1 when none): ids up to it
        were handed out by that version and must never be handed out again."""
        top = -1
        for name in self.checker.newer:
            folder = self.path / name
            if not (persist.SEGMENT_RE.match(name) and folder.is_dir()):
                continue
            try:
                ids = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
                if ids.size:
                    top = max(top, int(np.max(ids)))
                continue
            except (OSError, ValueError):
                pass
            try:
                meta = MetadataStore.open_read_only(folder / "metadata.sqlite")
                try:
                    ids = meta.all_ids()
                finally:
                    meta.close()
                if ids.size:
                    top = max(top, int(ids.max()))
            except Exception:  # sqlite3 errors: that segment's ids cannot be read
                self.report.notes.append(
                    f"{name}: its ids could not be read; ids it held may be handed out again"
                )
        if self.checker.newer:
            self.report.notes.append(
                f"kept version {self.manifest.get('version')}; files of newer versions deleted: "
                + ", ".join(self.checker.newer[:8])
                + (" ..." if len(self.checker.newer) > 8 else "")
            )
        return top

    def _new_folder(self) -> Path:
        folder = self.path / f"s{self.version:06d}-{secrets.token_hex(4)}"
        folder.mkdir()
        self.created.append(folder)
        return folder

    def _repair_segment(self, state: SegmentState, template: Template) -> dict[str, Any] | None:
        entry = state.entry
        name = entry["name"]
        folder = self.path / name
        rows = int(entry["rows"])
        touched = bool(state.bad_files) or not (
            state.ids_ok and state.metadata_ok and state.index_ok and state.lexicon_ok
        )
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
            # only the index or the lexicon is damaged: write a new generation of it in the same folder
            if not state.index_ok or (entry.get("index") or {}).get("file") in state.bad_files:
                entry = self._reindex(entry, template)
            if not state.lexicon_ok:
                entry = self._relex(entry)
            return entry
        return self._rewrite(entry, ids, keep, vectors, readable, template)

    def _relex(self, entry: dict[str, Any]) -> dict[str, Any]:
        from indexes.lexical.store import write_lexicon_record

        if self.checker.lexical is None:  # a lexicon the collection does not declare
            return {key: value for key, value in entry.items() if key != "lexical"}
        folder = self.path / entry["name"]
        record = write_lexicon_record(
            folder, self.checker.lexical, self.version, int(entry["rows"]), self._chunk_rows(entry)
        )
        self.created.append(folder / record["file"])
        self.report.notes.append(f"segment {entry['name']}: lexicon rebuilt from its metadata")
        return dict(entry, lexical=record)

    @staticmethod
    def _chunk_rows(entry: dict[str, Any]) -> int:
        from indexes.limits import DEFAULT_LIMITS

        return int((entry.get("lexical") or {}).get("chunk_rows") or DEFAULT_LIMITS.lexicon_chunk_rows)

    def _ids(self, state: SegmentState) -> np.ndarray | None:
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

    def _vectors(self, state: SegmentState, template: Template) -> tuple[np.ndarray | None, np.ndarray]:
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
            self.path, name, new_ids, vecs, None, template, None, self.version, texts=texts,
            lexical=self.checker.lexical, chunk_rows=self._chunk_rows(entry),
        )  # fmt: skip
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
