"""Work that runs in worker processes or Ray tasks: one segment from a shard, one segment's index.

Tasks take and return plain dicts (picklable, JSON-able), read their inputs from the shared file
system and write their outputs there; :class:`Runner` runs them here, in processes or on Ray, and
yields the results in task order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexes import files
from indexes.checks import check_norms
from indexes.metadata import validate_metadata

__all__ = ["ENGINES", "Runner", "Shard", "index_task", "read_metadata", "segment_task"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Shard:
    """One embedding file and the metadata rows that go with it."""

    vectors: str  # path of a .npy file [n, d]
    metadata: str | None  # .parquet or .jsonl with one row per vector, or None
    modality: str | None  # "image" / "text" for the clip-retrieval layout
    rows: int
    dim: int


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
    from indexes.lexical.config import TextIndex
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
    check_norms(vectors, f"the vectors of {shard.vectors}", first_row=lo)
    ids = np.arange(first_id, first_id + (hi - lo), dtype=np.int64)
    texts = read_metadata(shard, lo, hi)
    flat = Template("Flat", shard.dim, args["metric"])
    lexical = TextIndex.from_dict(args["lexical"]) if args.get("lexical") else None
    entry = write_segment(
        root, args["name"], ids, vectors, None, flat, None, int(args["generation"]), texts=texts,
        lexical=lexical, chunk_rows=int(args.get("lexicon_chunk_rows") or 65_536),
    )  # fmt: skip
    done = Path(args["done"])
    files.write_bytes(done.with_suffix(".tmp"), json.dumps(entry).encode())
    os.replace(done.with_suffix(".tmp"), done)
    return entry


def index_task(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: build one segment's index with the collection's template. Returns the index record."""
    import faiss

    from indexes.segment import write_index_record
    from indexes.template import Template

    before = faiss.omp_get_max_threads()
    template_file = args.get("template_file")
    if template_file:
        template = Template.read(args["spec"], int(args["dim"]), args["metric"], Path(template_file))
    else:
        template = Template(args["spec"], int(args["dim"]), args["metric"])
    # HNSW graphs built by several threads depend on their timing: one thread makes every build of
    # the same shards identical. IVF and codes are the same whatever the number of threads.
    threads = 1 if template.kind == "hnsw" else int(args.get("threads") or before)
    faiss.omp_set_num_threads(threads)
    try:
        folder = Path(args["folder"])
        vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        part = template.build_part(vectors)
        assert part is not None
        return write_index_record(folder, part, template, int(args["generation"]))
    finally:
        faiss.omp_set_num_threads(before)  # a task run in this process leaves its threads as they were


class Runner:
    """Runs tasks in this process, in worker processes, or as Ray tasks; results in task order.

    :attr:`threads_per_task` is how many FAISS threads each task may use: all of them in this
    process, the cores shared out between local worker processes, one per Ray task.
    """

    def __init__(self, engine: str = "local", workers: int = 1, ray_address: str | None = None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, received {engine!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, received {workers!r}")
        self.engine = engine
        self.workers = workers
        self.ray_address = ray_address

    @property
    def threads_per_task(self) -> int:
        import faiss

        if self.engine == "ray":
            return 1
        if self.workers == 1:
            return faiss.omp_get_max_threads()
        return max(1, (os.cpu_count() or 1) // self.workers)

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
