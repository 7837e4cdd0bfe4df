"""Bulk build: a collection from embedding shards (``.npy``), in parallel, memory-bounded.

Reads the layout clip-retrieval writes (and ``retrieval embed --npy-export``)::

    SHARDS/img_emb/img_emb_0.npy        float32 (or float16) [n0, d]
    SHARDS/metadata/metadata_0.parquet  one row per vector of img_emb_0 (optional, but all or none)
    SHARDS/text_emb/text_emb_0.npy      captions (metadata in text_metadata/ when images exist)

or a folder of ``.npy`` files (each with an optional same-name ``.parquet`` / ``.jsonl`` beside it), or
one ``.npy`` file. The build follows autofaiss / clip-retrieval: the index is trained once on a
seeded sample, every shard becomes segments (vectors, ids, metadata, then its share of the index)
in worker processes (``engine="local"``) or Ray tasks (``engine="ray"``, for a cluster with a shared
file system), and the manifest that lists them all is the commit. Ids are given in shard order
(shard 0's rows first), so the result does not depend on the number of workers: serial, parallel
and Ray builds write identical files (workers build with one thread each).

Each worker holds one segment at a time (the segment size follows ``memory_budget``); the main
process holds the training sample. An interrupted build resumes: finished segments are recorded
in ``<out>/.build/`` and reused when the same shards are built again with the same options. "The
same shards" means the same bytes: the plan records a hash of every shard's vectors and metadata
(a file not rewritten since the last build, by its size, times and inode, keeps its recorded hash),
so re-embedded shards of unchanged shapes are never mistaken for the ones built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexes import files, persist
from indexes.tasks import Runner, Shard, segment_task

__all__ = ["BuildSummary", "Shard", "build_collection", "discover_shards"]

logger = logging.getLogger(__name__)

COMMIT_EVERY = 30.0  # seconds between commits of finished segments during a build


@dataclass
class BuildSummary:
    """What :func:`build_collection` did."""

    path: str
    count: int
    shards: int
    segments: int
    index_spec: str
    seconds: dict[str, float] = field(default_factory=dict)
    reused_segments: int = 0
    engine: str = "local"
    workers: int = 1


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _npy_info(path: Path) -> tuple[int, int]:
    dtype, shape = files.npy_shape(path)
    if len(shape) != 2 or dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"{path} holds {dtype}{list(shape)}; expected a float32 or float16 [n, d] array")
    return int(shape[0]), int(shape[1])


def discover_shards(source: str | os.PathLike[str]) -> list[Shard]:
    """The shards under ``source`` (see the module doc), in build order."""
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; expected a folder of .npy embedding shards")
    shards: list[Shard] = []
    if root.is_file():
        if root.suffix != ".npy":
            raise ValueError(f"{root} is not a .npy file")
        return [_shard(root, _sidecar(root), None)]
    img, txt = root / "img_emb", root / "text_emb"
    if img.is_dir() or txt.is_dir():
        has_images = img.is_dir() and any(img.glob("*.npy"))
        for folder, stem, modality, meta_folder in (
            (img, "img_emb", "image", "metadata"),
            (txt, "text_emb", "text", "text_metadata" if has_images else "metadata"),
        ):
            if not folder.is_dir():
                continue
            # metadata is optional as a whole; once a metadata folder holds files, every shard has one
            with_meta = any((root / meta_folder).glob(f"{meta_folder}_*.parquet"))
            for npy in sorted(folder.glob(f"{stem}_*.npy"), key=_natural):
                number = npy.stem[len(stem) + 1 :]
                meta = root / meta_folder / f"{meta_folder}_{number}.parquet"
                if with_meta and not meta.exists():
                    raise ValueError(
                        f"{meta} is missing: the other shards of {root / meta_folder} have their metadata, "
                        f"{npy} would get none; restore it, or move {meta_folder}/ away to build without "
                        "metadata"
                    )
                shards.append(_shard(npy, meta if meta.exists() else None, modality))
    else:
        for npy in sorted(root.glob("*.npy"), key=_natural):
            shards.append(_shard(npy, _sidecar(npy), None))
    if not shards:
        raise ValueError(
            f"no embedding shards found in {root}: expected img_emb/*.npy and/or text_emb/*.npy "
            "(clip-retrieval layout), or .npy files"
        )
    dims = {s.dim for s in shards}
    if len(dims) != 1:
        raise ValueError(
            f"the shards under {root} have different dims {sorted(dims)}; build one collection per model"
        )
    return shards


def _sidecar(npy: Path) -> Path | None:
    for suffix in (".parquet", ".jsonl"):
        side = npy.with_suffix(suffix)
        if side.exists():
            return side
    return None


def _shard(npy: Path, meta: Path | None, modality: str | None) -> Shard:
    rows, dim = _npy_info(npy)
    return Shard(str(npy.resolve()), str(meta.resolve()) if meta else None, modality, rows, dim)


# ---------------------------------------------------------------------------------------------- build
def build_collection(
    source: str | os.PathLike[str] | Sequence[Shard],
    out: str | os.PathLike[str],
    index: str = "auto",
    metric: str = "ip",
    fingerprint: str | None = None,
    memory_budget: int | str | None = None,
    recall_target: float = 0.95,
    workers: int = 2,
    engine: str = "local",
    ray_address: str | None = None,
    overwrite: bool = False,
    text_fields: Sequence[str] | None = None,
    stemming: str | None = None,
) -> BuildSummary:
    """Build the collection ``out`` from embedding shards (see the module doc) and return a summary.

    ``text_fields`` / ``stemming`` declare a text index over those metadata fields (as
    :meth:`indexes.Collection.create`); each segment's lexicon is built by the task writing it.
    """
    from indexes.collection import Collection

    t0 = time.perf_counter()
    shards = list(source) if not isinstance(source, (str, os.PathLike)) else discover_shards(source)
    runner = Runner(engine, workers, ray_address)
    dim = shards[0].dim
    out = Path(out)
    state_dir = out / ".build"
    old = None
    if out.exists() and (out / persist.MANIFEST).exists():
        old = _read_plan(state_dir / "plan.json")
    contents = _contents(shards, old)
    plan = {
        "shards": [dict(s.__dict__, content=c["content"]) for s, c in zip(shards, contents)],
        "index": index,
        "metric": metric,
        "fingerprint": fingerprint,
        **({"text_fields": list(text_fields), "stemming": stemming} if text_fields else {}),
    }
    plan_key = hashlib.blake2b(json.dumps(plan, sort_keys=True).encode(), digest_size=16).hexdigest()
    reuse = False
    if out.exists() and (out / persist.MANIFEST).exists():
        reuse = old is not None and old.get("key") == plan_key
        if not reuse and not overwrite:
            raise FileExistsError(
                f"collection {out} already exists{_difference(old, plan)}: choose another --out, or pass "
                "overwrite=True (--overwrite) to build it again from these shards"
            )
    coll = None
    if reuse:
        coll = Collection.open(out)
        if coll.info()["unsaved_changes"] is False and (state_dir / "complete").exists():
            summary = BuildSummary(
                str(out),
                len(coll),
                len(shards),
                len(coll.segments),
                coll.index_spec,
                engine=engine,
                workers=workers,
            )
            coll.close()
            logger.info("%s is already built from these shards; nothing to do", out)
            return summary
    else:
        coll = Collection.create(
            out,
            dim,
            metric=metric,
            index=index,
            fingerprint=fingerprint,
            memory_budget=memory_budget,
            recall_target=recall_target,
            overwrite=overwrite,
            text_fields=text_fields,
            stemming=stemming,
        )
        state_dir.mkdir(exist_ok=True)
        (state_dir / "done").mkdir(exist_ok=True)
        for stale in (state_dir / "done").glob("*"):
            stale.unlink()
        (state_dir / "complete").unlink(missing_ok=True)
        recorded = dict(plan, key=plan_key, stats=[c["stat"] for c in contents])
        (state_dir / ".plan.tmp").unlink(missing_ok=True)
        files.write_bytes(state_dir / ".plan.tmp", json.dumps(recorded).encode())
        os.replace(state_dir / ".plan.tmp", state_dir / "plan.json")
    try:
        summary = _build(coll, shards, runner, state_dir)
    finally:
        coll.close()
    summary.seconds["total"] = round(time.perf_counter() - t0, 2)
    return summary


def _read_plan(path: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _stat(path: str) -> list[int]:
    """What changes whenever a file is rewritten (size, modification and change times, inode)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _content_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _contents(shards: Sequence[Shard], old: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per shard: a hash of its vectors' and metadata's bytes, and the files' stat (see :func:`_stat`).

    A build is reused only for shards of the same content. Hashing reads every shard once; a file
    whose stat equals the one recorded by the previous build (same size, times and inode: it was not
    rewritten since) keeps the hash recorded then.
    """
    known: dict[tuple[str, str], str] = {}  # (file, its stat then) -> hash recorded by the last build
    if old:
        for s, stat in zip(old.get("shards") or [], old.get("stats") or []):
            if not (isinstance(s, dict) and isinstance(s.get("content"), dict) and isinstance(stat, dict)):
                continue
            for role in ("vectors", "metadata"):
                if s.get(role) and role in s["content"] and role in stat:
                    known[(s[role], json.dumps(stat[role]))] = s["content"][role]
    out = []
    for shard in shards:
        content: dict[str, str] = {}
        stat: dict[str, list[int]] = {}
        for role, file in (("vectors", shard.vectors), ("metadata", shard.metadata)):
            if file is not None:
                stat[role] = _stat(file)
                content[role] = known.get((file, json.dumps(stat[role]))) or _content_hash(file)
        out.append({"content": content, "stat": stat})
    return out


def _difference(old: dict[str, Any] | None, plan: dict[str, Any]) -> str:
    """What differs between the plan of the existing build and this one, as a clause of an error."""
    if old is None or "shards" not in old:
        return ""
    for key in ("index", "metric", "fingerprint"):
        if old.get(key) != plan[key]:
            return f" with {key} {old.get(key)!r} (this build: {plan[key]!r})"
    before = {s.get("vectors"): s for s in old["shards"] if isinstance(s, dict)}
    changed = []
    for s in plan["shards"]:
        was = before.get(s["vectors"])
        if was is None:
            changed.append(f"{Path(s['vectors']).name} is new")
            continue
        for role in ("vectors", "metadata"):
            file = s["vectors"] if role == "vectors" else s["metadata"]
            if (was.get("content") or {}).get(role) != s["content"].get(role):
                changed.append(f"{Path(file or was.get('metadata') or '?').name} changed")
    gone = set(before) - {s["vectors"] for s in plan["shards"]}
    changed += [f"{Path(str(v)).name} is gone" for v in sorted(gone, key=str)]
    if changed:
        return f", built from other shards ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})"
    return " (built from other shards or options)"


def _build(coll: Any, shards: list[Shard], runner: Runner, state_dir: Path) -> BuildSummary:

    t0 = time.perf_counter()
    max_rows = coll._segment_max_rows()
    generation = int(coll._manifest.get("version", 0)) + 1
    tasks: list[dict[str, Any]] = []
    first_id = 0
    for number, shard in enumerate(shards):
        for part, lo in enumerate(range(0, shard.rows, max_rows)):
            hi = min(shard.rows, lo + max_rows)
            done = state_dir / "done" / f"{number:06d}-{part:04d}.json"
            tasks.append(
                {
                    "shard": shard.__dict__,
                    "lo": lo,
                    "hi": hi,
                    "first_id": first_id + lo,
                    "root": str(coll.path),
                    "name": f"s{generation:06d}-{secrets.token_hex(4)}",
                    "metric": coll.metric,
                    "generation": generation,
                    "done": str(done),
                    "lexical": coll._lexical.as_dict() if coll._lexical else None,
                    "lexicon_chunk_rows": coll.limits.lexicon_chunk_rows,
                }
            )
        first_id += shard.rows
    committed = {e["name"]: e for e in coll._manifest.get("segments") or []}
    entries: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    for task in tasks:
        entry = _reusable(Path(task["done"]), committed)
        if entry is not None and not todo:
            entries.append(entry)  # a prefix of finished, committed segments is kept
        else:
            todo.append(task)
    reused = len(entries)
    logger.info("building %d segments from %d shards (%d reused)", len(todo), len(shards), reused)
    last_commit = time.perf_counter()
    coll._in_flight = {coll.path / t["name"] for t in todo}  # commits meanwhile must not sweep them
    for entry in runner.imap(segment_task, todo):
        entries.append(entry)
        coll._pending.add(coll.path / entry["name"])
        if time.perf_counter() - last_commit > COMMIT_EVERY:
            _commit_segments(coll, entries, generation)  # progress survives an interruption
            last_commit = time.perf_counter()
    coll._in_flight = set()
    _commit_segments(coll, entries, generation)
    t1 = time.perf_counter()
    # the index: trained once in this process, each segment's share built by the runner
    coll._runner = runner
    try:
        if coll._requested == "auto":
            coll._auto = None
            coll.save()  # chooses (measuring candidates), builds and commits
        else:
            coll._install(coll._build_state(coll._requested, coll._segments))
            coll.save()
    finally:
        coll._runner = None
    files.write_bytes(state_dir / "complete.tmp", b"ok\n")
    os.replace(state_dir / "complete.tmp", state_dir / "complete")
    t2 = time.perf_counter()
    return BuildSummary(
        str(coll.path),
        len(coll),
        len(shards),
        len(coll.segments),
        coll.index_spec,
        seconds={"segments": round(t1 - t0, 2), "index": round(t2 - t1, 2)},
        reused_segments=reused,
        engine=runner.engine,
        workers=runner.workers,
    )


def _commit_segments(coll: Any, entries: list[dict[str, Any]], generation: int) -> None:
    from indexes.segment import Segment

    for seg in coll._segments:
        seg.close()
    coll._segments = [Segment.open(coll.path, e, coll.dim, coll._template, check=False) for e in entries]
    coll._deleted_fields = {s.name: {} for s in coll._segments}
    coll._next_id = (int(entries[-1]["id_max"]) + 1) if entries else 0
    coll._dirty = True
    coll._commit(coll._manifest_for(int(coll._manifest.get("version", 0)) + 1, coll._segments), previous=None)


def _reusable(done: Path, committed: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The committed entry of a segment a previous run finished."""
    if not done.exists():
        return None
    try:
        entry = json.loads(done.read_text())
    except ValueError:
        return None
    return committed.get(entry["name"])
