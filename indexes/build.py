"""Bulk build: a collection from embedding shards (``.npy``), in parallel, memory-bounded.

Reads the layout clip-retrieval writes (and ``retrieval embed --npy-export``)::

    SHARDS/img_emb/img_emb_0.npy        float32 (or float16) [n0, d]
    SHARDS/metadata/metadata_0.parquet  one row per vector of img_emb_0 (optional)
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
in ``<out>/.build/`` and reused when the same shards are built again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexes import files, persist
from indexes.metadata import validate_metadata

__all__ = ["BuildSummary", "Shard", "build_collection", "discover_shards"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
COMMIT_EVERY = 30.0  # seconds between commits of finished segments during a build


@dataclass(frozen=True)
class Shard:
    """One embedding file and the metadata rows that go with it."""

    vectors: str  # path of a .npy file [n, d]
    metadata: str | None  # .parquet or .jsonl with one row per vector, or None
    modality: str | None  # "image" / "text" for the clip-retrieval layout
    rows: int
    dim: int


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
            for npy in sorted(folder.glob(f"{stem}_*.npy"), key=_natural):
                number = npy.stem[len(stem) + 1 :]
                meta = root / meta_folder / f"{meta_folder}_{number}.parquet"
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


# ---------------------------------------------------------------------------------------------- tasks
def read_metadata(shard: Shard, lo: int, hi: int) -> list[str]:
    """JSON texts of rows ``lo:hi`` of a shard's metadata ({} without metadata); ``image_path``
    (clip-retrieval's column) becomes ``path``, and the shard's modality is added when rows lack one."""
    rows: list[dict[str, Any]]
    if shard.metadata is None:
        rows = [{} for _ in range(hi - lo)]
    elif shard.metadata.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow comes with the toolkit
            raise ImportError("reading .parquet metadata needs pyarrow: pip install pyarrow") from exc
        table = pq.read_table(shard.metadata)
        if table.num_rows != shard.rows:
            raise ValueError(
                f"{shard.metadata} has {table.num_rows} rows but {shard.vectors} has {shard.rows} vectors: "
                "each metadata row must describe the vector in the same position"
            )
        rows = table.slice(lo, hi - lo).to_pylist()
    else:
        with open(shard.metadata, encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
        if len(lines) != shard.rows:
            raise ValueError(
                f"{shard.metadata} has {len(lines)} lines but {shard.vectors} has {shard.rows} vectors"
            )
        rows = [json.loads(line) for line in lines[lo:hi]]
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if v is not None or k != "image_path"}
        if "image_path" in row and "path" not in row:
            row["path"] = row.pop("image_path")
        if shard.modality is not None and "modality" not in row:
            row["modality"] = shard.modality
        out.append(row)
    return validate_metadata(out, len(out))


def segment_task(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: rows ``lo:hi`` of one shard -> a segment folder (no index yet). Returns its entry."""
    from indexes.segment import write_segment
    from indexes.template import Template

    shard = Shard(**args["shard"])
    lo, hi, first_id = int(args["lo"]), int(args["hi"]), int(args["first_id"])
    root = Path(args["root"])
    src = np.load(shard.vectors, mmap_mode="r", allow_pickle=False)
    vectors = np.asarray(src[lo:hi], dtype=np.float32)
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0]) + lo
        raise ValueError(f"{shard.vectors} row {bad} holds NaN or infinite values; clean the shard first")
    ids = np.arange(first_id, first_id + (hi - lo), dtype=np.int64)
    texts = read_metadata(shard, lo, hi)
    flat = Template("Flat", shard.dim, args["metric"])
    entry = write_segment(
        root, args["name"], ids, vectors, None, flat, None, int(args["generation"]), texts=texts
    )
    done = Path(args["done"])
    files.write_bytes(done.with_suffix(".tmp"), json.dumps(entry).encode())
    os.replace(done.with_suffix(".tmp"), done)
    return entry


def index_task(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: build one segment's index with the collection's template. Returns the index record."""
    import faiss

    from indexes.segment import write_index_record
    from indexes.template import Template

    faiss.omp_set_num_threads(int(args.get("threads", 1)))
    template_file = args.get("template_file")
    if template_file:
        template = Template.read(args["spec"], int(args["dim"]), args["metric"], Path(template_file))
    else:
        template = Template(args["spec"], int(args["dim"]), args["metric"])
    folder = Path(args["folder"])
    vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
    part = template.build_part(vectors)
    assert part is not None
    return write_index_record(folder, part, template, int(args["generation"]))


class Runner:
    """Runs tasks in this process, in worker processes, or as Ray tasks; results in task order."""

    def __init__(self, engine: str = "local", workers: int = 1, ray_address: str | None = None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, received {engine!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, received {workers!r}")
        self.engine = engine
        self.workers = workers
        self.ray_address = ray_address

    def map(self, fn: Callable[[dict[str, Any]], Any], tasks: Sequence[dict[str, Any]]) -> list[Any]:
        return list(self.imap(fn, tasks))

    def imap(self, fn: Callable[[dict[str, Any]], Any], tasks: Sequence[dict[str, Any]]) -> Iterator[Any]:
        """Results in task order, each as soon as it (and those before it) are done."""
        if not tasks:
            return
        if self.engine == "ray":
            yield from self._ray(fn, tasks)
            return
        if self.workers == 1 or len(tasks) == 1:
            for t in tasks:
                yield fn(t)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS threads
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx) as pool:
            yield from pool.map(fn, tasks)

    def _ray(self, fn: Callable[[dict[str, Any]], Any], tasks: Sequence[dict[str, Any]]) -> Iterator[Any]:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray comes with the distributed extra
            raise ImportError("engine='ray' needs Ray: pip install 'siamese-retrieval[distributed]'") from exc
        started = False
        if not ray.is_initialized():
            ray.init(address=self.ray_address, include_dashboard=False, log_to_driver=False)
            started = True
        try:
            remote = ray.remote(num_cpus=1)(fn)
            refs = [remote.remote(t) for t in tasks]
            for ref in refs:
                yield ray.get(ref)
        finally:
            if started:
                ray.shutdown()


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
) -> BuildSummary:
    """Build the collection ``out`` from embedding shards (see the module doc) and return a summary."""
    from indexes import maintenance
    from indexes.collection import Collection

    t0 = time.perf_counter()
    shards = list(source) if not isinstance(source, (str, os.PathLike)) else discover_shards(source)
    runner = Runner(engine, workers, ray_address)
    dim = shards[0].dim
    out = Path(out)
    plan = {
        "shards": [s.__dict__ for s in shards],
        "index": index,
        "metric": metric,
        "fingerprint": fingerprint,
    }
    plan_key = files.digest_bytes(json.dumps(plan, sort_keys=True).encode())["crc32"][0]
    state_dir = out / ".build"
    reuse = False
    if out.exists() and (out / persist.MANIFEST).exists():
        old = (
            json.loads((state_dir / "plan.json").read_text()) if (state_dir / "plan.json").exists() else None
        )
        reuse = old is not None and old.get("key") == plan_key
        if not reuse and not overwrite:
            raise FileExistsError(
                f"collection {out} already exists: choose another --out, or pass overwrite=True"
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
        )
        state_dir.mkdir(exist_ok=True)
        (state_dir / "done").mkdir(exist_ok=True)
        for stale in (state_dir / "done").glob("*"):
            stale.unlink()
        (state_dir / "complete").unlink(missing_ok=True)
        files.write_bytes(state_dir / ".plan.tmp", json.dumps({"key": plan_key, **plan}).encode())
        os.replace(state_dir / ".plan.tmp", state_dir / "plan.json")
    try:
        summary = _build(coll, shards, runner, state_dir, maintenance)
    finally:
        coll.close()
    summary.seconds["total"] = round(time.perf_counter() - t0, 2)
    return summary


def _build(coll: Any, shards: list[Shard], runner: Runner, state_dir: Path, maintenance: Any) -> BuildSummary:

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
    for entry in runner.imap(segment_task, todo):
        entries.append(entry)
        coll._pending.add(coll.path / entry["name"])
        if time.perf_counter() - last_commit > COMMIT_EVERY:
            _commit_segments(coll, entries, generation)  # progress survives an interruption
            last_commit = time.perf_counter()
    _commit_segments(coll, entries, generation)
    t1 = time.perf_counter()
    # the index: trained once in this process, each segment's share built by the runner
    coll._runner = runner
    try:
        if coll._requested == "auto":
            coll._auto = None
            coll.save()  # chooses (measuring candidates), builds and commits
        else:
            state = maintenance.build_state(coll, coll._requested, coll._segments)
            maintenance.install(coll, state)
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
