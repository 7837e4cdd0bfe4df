"""Segmented collections at scale: the cost of a small change, many segments vs one, bulk builds, verification.

Sections (``--sections``, all by default):

* ``change``: a saved ``--n`` x ``--dim`` collection (``auto``); add 1,000 vectors, remove 100, save:
  bytes written (``/proc/self/io`` write_bytes, and the size of the new files) and wall time.
  Target: under 2 % of the collection's bytes and under 0.5 s.
* ``segments``: search over 8 uncompacted segments vs the same collection compacted into one, at
  the same parameters (so at equal recall for IVF, whose segments share one quantizer): batch QPS
  ratio (target >= 0.8) for IVF-Flat and HNSW, single-query p50.
* ``verify``: the cost of the checks made when opening (sizes, headers, small files whole) and of a
  full ``verify()``, as shares of the open time and of reading every file once.
* ``build``: ``--build-n`` x ``--dim`` clustered unit vectors generated in 1M shards on disk (exact
  ground truth for 1,000 queries computed shard by shard), built with ``indexes.build`` by 2 worker
  processes under ``--budget``: wall time, peak anonymous memory of the process tree (RssAnon,
  sampled) and file-backed pages reported apart, recall@10 against exact, batch QPS against exact
  flat search, single-query p50; then grown by 10 % in 10 saves. Also serial vs 2-process build time
  and local vs Ray build equality on ``--compare-n`` vectors.

    python benchmarks/bench_segments.py                           # full size (1M, 10M)
    python benchmarks/bench_segments.py --n 100000 --build-n 1000000 --compare-n 200000   # quicker

Prints a Markdown table and writes it to ``benchmarks/results/segments.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from indexes import Collection, Limits, auto
from indexes.build import build_collection

K = 10
rows_out: list[list[str]] = []


# ---------------------------------------------------------------------------------------------- helpers
def clustered_block(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    block = centres[rng.integers(0, centres.shape[0], n)]
    block = block + spread * rng.standard_normal(block.shape, dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block.astype(np.float32)


def io_written() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def tree_memory(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) bytes summed over ``pid`` and its descendants."""
    anon = file = 0
    pids = [pid]
    seen = set()
    while pids:
        p = pids.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
                    elif line.startswith("RssFile:"):
                        file += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    pids.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return anon, file


class PeakMemory:
    """Samples the process tree's anonymous and file-backed resident memory every 0.2 s."""

    def __enter__(self) -> PeakMemory:
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, file = tree_memory(os.getpid())
            self.anon, self.file = max(self.anon, anon), max(self.file, file)
            self._stop.wait(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(f[f >= 0], t).size / t.size for f, t in zip(found, truth)]))


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def single_p50(fn, queries: np.ndarray, n: int = 100) -> float:
    times = []
    for i in range(min(n, queries.shape[0])):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(*cells: str) -> None:
    rows_out.append(list(cells))
    print(" | ".join(cells), flush=True)


# ---------------------------------------------------------------------------------------------- sections
def section_change(root: Path, n: int, dim: int, rng: np.random.Generator) -> None:
    centres = rng.standard_normal((1_000, dim)).astype(np.float32)
    path = root / "change"
    t0 = time.perf_counter()
    with Collection.create(path, dim, index="auto") as coll:
        for lo in range(0, n, 100_000):
            coll.add(
                clustered_block(rng, centres, min(100_000, n - lo), 0.6),
                [{"b": i % 100} for i in range(lo, min(n, lo + 100_000))],
            )
            coll.save()
    build = time.perf_counter() - t0
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    before = {p for p in path.rglob("*") if p.is_file()}
    with Collection.open(path) as coll:
        spec = coll.index_spec
        extra = clustered_block(rng, centres, 1_000, 0.6)
        w0, t0 = io_written(), time.perf_counter()
        coll.add(extra, [{"b": -1}] * 1_000)
        coll.remove(np.linspace(0, n - 1, 100).astype(np.int64))
        coll.save()
        seconds, written = time.perf_counter() - t0, io_written() - w0
    new = sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and (p not in before or p.name == "manifest.json")
    )
    share = written / total
    row(
        "add 1,000 + remove 100 + save",
        f"{n:,} x {dim}, auto -> {spec}, {total / 2**20:,.0f} MB on disk (built in {build:.0f} s)",
        f"{written / 2**20:.2f} MB written ({share:.3%}), new files {new / 2**20:.2f} MB",
        f"{seconds:.3f} s",
        "< 2 % of the collection and < 0.5 s",
        "yes" if share < 0.02 and seconds < 0.5 else "no",
    )


def section_segments(root: Path, n: int, dim: int, rng: np.random.Generator, nq: int) -> None:
    centres = rng.standard_normal((1_000, dim)).astype(np.float32)
    x = clustered_block(rng, centres, n, 0.6)
    q = clustered_block(rng, centres, nq, 0.6)
    _, truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    saved = Collection.default_limits
    Collection.default_limits = Limits(merge_factor=1_000)  # keep the 8 segments apart
    try:
        for spec in (f"IVF{auto.choose_nlist(n)},Flat", "HNSW32"):
            path = root / f"seg-{spec.replace(',', '_')}"
            with Collection.create(path, dim, index=spec) as coll:
                for part in np.array_split(np.arange(n), 8):
                    coll.add(x[part])
                    coll.save()
                coll.tune(queries=q[:200])
                params = {k: v for k, v in coll.params.items() if k in ("nprobe", "efSearch", "refine")}
            with Collection.open(path, read_only=True) as coll:
                assert len(coll.segments) == 8
                coll.search(q, K)
                t8 = timed(lambda c=coll: c.search(q, K))
                r8 = recall_at_k(coll.search(q, K)[1], truth)
                s8 = single_p50(lambda v, c=coll: c.search(v, K), q)
            with Collection.open(path) as coll:
                coll.compact(force=True)
                if spec.startswith("IVF"):  # one shared quantizer: the same parameters give the same recall
                    coll._params.update(params)
                    coll._dirty = True
                else:  # one graph is not eight graphs: tune it to the same target on the same queries
                    coll.tune(queries=q[:200])
                params1 = {k: v for k, v in coll.params.items() if k in ("nprobe", "efSearch", "refine")}
            with Collection.open(path, read_only=True) as coll:
                assert len(coll.segments) == 1
                coll.search(q, K)
                t1 = timed(lambda c=coll: c.search(q, K))
                r1 = recall_at_k(coll.search(q, K)[1], truth)
                s1 = single_p50(lambda v, c=coll: c.search(v, K), q)
            ratio = t1 / t8
            knobs = ", ".join(f"{k}={v}" for k, v in params.items())
            if params1 != params:
                knobs += " / " + ", ".join(f"{k}={v}" for k, v in params1.items())
            row(
                f"8 segments vs 1, {spec} ({knobs})",
                f"{n:,} x {dim}, {nq:,} queries",
                f"8: {nq / t8:,.0f} QPS, recall {r8:.3f}, single p50 {s8 * 1e3:.2f} ms; "
                f"1: {nq / t1:,.0f} QPS, recall {r1:.3f}, single p50 {s1 * 1e3:.2f} ms",
                f"QPS ratio {ratio:.2f}",
                ">= 0.8 at equal recall",
                "yes" if ratio >= 0.8 else "no",
            )
    finally:
        Collection.default_limits = saved


def section_verify(root: Path, n: int, dim: int, rng: np.random.Generator) -> None:
    from indexes import segment

    path = root / "change"
    if not path.exists():
        centres = rng.standard_normal((1_000, dim)).astype(np.float32)
        with Collection.create(path, dim, index="auto") as coll:
            coll.add(clustered_block(rng, centres, n, 0.6))
    files = [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)

    def read_all() -> None:
        for p in files:
            with open(p, "rb") as fh:
                while fh.read(1 << 22):
                    pass

    read_all()  # warm the page cache: every figure below reads from memory
    t_read = timed(read_all)

    def open_close() -> None:
        Collection.open(path, read_only=True).close()

    t_open = timed(open_close, 5)
    original = segment._check_on_open
    segment._check_on_open = lambda path, digest, hint, verify_bytes: None  # no checks at all
    try:
        t_open_bare = timed(open_close, 5)
    finally:
        segment._check_on_open = original
    with Collection.open(path, read_only=True) as coll:
        t_verify = timed(lambda: coll.verify(), 1)
        ok = coll.verify().ok
    checks = max(t_open - t_open_bare, 0.0)
    row(
        "verification on open",
        f"{n:,} x {dim}, {size / 2**20:,.0f} MB in {len(files)} files",
        f"open {t_open * 1e3:.1f} ms, of which checks {checks * 1e3:.1f} ms ({checks / t_open:.0%})",
        f"reading every file: {t_read:.2f} s",
        "cheap checks only",
        "-",
    )
    row(
        "full verify()",
        f"{n:,} x {dim}",
        f"{t_verify:.2f} s ({'no damage' if ok else 'DAMAGE'})",
        f"{t_verify / t_read:.1f}x reading every file once",
        "-",
        "-",
    )


def make_shards(
    folder: Path, n: int, dim: int, rng: np.random.Generator, nq: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Shards of 1M clustered vectors on disk, queries, and the exact top-10 (computed shard by shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    centres = rng.standard_normal((4_096, dim)).astype(np.float32)
    q = clustered_block(rng, centres, nq, 0.6)
    best_s = np.full((nq, K), -np.inf, dtype=np.float32)
    best_i = np.full((nq, K), -1, dtype=np.int64)
    t_exact = 0.0
    start = 0
    for i, lo in enumerate(range(0, n, 1_000_000)):
        m = min(1_000_000, n - lo)
        block = clustered_block(rng, centres, m, 0.6)
        np.save(folder / f"emb_{i:03d}.npy", block)
        t0 = time.perf_counter()
        s, pos = faiss.knn(q, block, K, metric=faiss.METRIC_INNER_PRODUCT)
        t_exact += time.perf_counter() - t0
        s_all = np.hstack([best_s, s])
        i_all = np.hstack([best_i, pos + start])
        order = np.argsort(-s_all, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s_all, order, 1), np.take_along_axis(i_all, order, 1)
        start += m
        del block
    return q, best_i, t_exact


def section_build(
    root: Path, n: int, dim: int, rng: np.random.Generator, budget: str, nq: int, workers: int
) -> None:
    shards = root / "shards"
    t0 = time.perf_counter()
    q, truth, t_exact = make_shards(shards, n, dim, rng, nq)
    print(f"generated {n:,} vectors + exact truth in {time.perf_counter() - t0:.0f} s", flush=True)
    path = root / "big"
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        summary = build_collection(shards, path, index="auto", memory_budget=budget, workers=workers)
        wall = time.perf_counter() - t0
    with Collection.open(path, read_only=True) as coll:
        coll.search(q, K)
        t = timed(lambda: coll.search(q, K), 3)
        rec = recall_at_k(coll.search(q, K)[1], truth)
        p50 = single_p50(lambda v: coll.search(v, K), q)
        decision = coll.info()["auto"]
        params = {k: v for k, v in coll.params.items() if k in ("nprobe", "efSearch", "refine")}
    speedup = t_exact / t
    row(
        f"bulk build, {workers} workers, budget {budget}",
        f"{n:,} x {dim} in {len(list(shards.glob('*.npy')))} shards",
        f"{wall:.0f} s ({summary.seconds}); peak anon {gb(mem.anon)}, file pages {gb(mem.file)}",
        f"auto -> {summary.index_spec} {params}: {nq / t:,.0f} QPS vs exact {nq / t_exact:,.1f} QPS ({speedup:.0f}x), "
        f"single p50 {p50 * 1e3:.2f} ms",
        f"recall@10 {rec:.3f}; tried {[(c['spec'], c['verdict']) for c in decision.get('tried', [])]}",
        "yes" if mem.anon <= 6 * 2**30 and rec >= 0.95 and speedup >= 10 else "no",
    )
    # grow by 10 % in 10 saves
    centres_rng = np.random.default_rng(1)
    centres = centres_rng.standard_normal((4_096, dim)).astype(np.float32)
    step = n // 100
    times = []
    with PeakMemory() as mem, Collection.open(path) as coll:
        for _ in range(10):
            block = clustered_block(rng, centres, step, 0.6)
            t0 = time.perf_counter()
            coll.add(block)
            coll.save()
            times.append(time.perf_counter() - t0)
        segments = len(coll.segments)
    with Collection.open(path, read_only=True) as coll:
        t = timed(lambda: coll.search(q, K), 3)
        found = coll.search(q, K)[1]
    row(
        "grow by 10 % in 10 saves",
        f"{n:,} -> {n + 10 * step:,} x {dim}",
        f"add + save {statistics.median(times):.1f} s median, {max(times):.1f} s max; peak anon {gb(mem.anon)}; {segments} segments",
        f"{nq / t:,.0f} QPS after",
        f"recall@10 vs the original top-10 {recall_at_k(found, truth):.3f} (new vectors may enter it)",
        "-",
    )


def section_compare(root: Path, n: int, dim: int, rng: np.random.Generator) -> None:
    shards = root / "cmp-shards"
    shards.mkdir(parents=True, exist_ok=True)
    centres = rng.standard_normal((1_000, dim)).astype(np.float32)
    per = max(n // 4, 1)
    for i in range(4):
        np.save(shards / f"emb_{i}.npy", clustered_block(rng, centres, per, 0.6))
    times = {}
    spec = f"IVF{auto.choose_nlist(4 * per)},PQ32"
    for workers in (1, 2):
        t0 = time.perf_counter()
        build_collection(shards, root / f"cmp-{workers}", index=spec, workers=workers)
        times[workers] = time.perf_counter() - t0
    sig = [_signature(root / f"cmp-{w}") for w in (1, 2)]
    row(
        "serial vs 2-process build",
        f"{4 * per:,} x {dim} in 4 shards, {spec}",
        f"serial {times[1]:.1f} s, 2 processes {times[2]:.1f} s ({times[1] / times[2]:.2f}x)",
        "identical files" if sig[0] == sig[1] else "FILES DIFFER",
        "-",
        "yes" if sig[0] == sig[1] else "no",
    )
    try:
        import ray
    except ImportError:
        row("Ray build", "-", "ray not installed", "-", "-", "-")
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        build_collection(shards, root / "cmp-ray", index=spec, engine="ray")
        t_ray = time.perf_counter() - t0
    finally:
        ray.shutdown()
    same = _signature(root / "cmp-ray") == sig[0]
    row(
        "local Ray cluster build",
        f"{4 * per:,} x {dim}",
        f"{t_ray:.1f} s (2 CPUs)",
        "identical files to the local build" if same else "FILES DIFFER",
        "-",
        "yes" if same else "no",
    )


def _signature(path: Path) -> list:
    manifest = json.loads((path / "manifest.json").read_text())
    out: list = [manifest["count"], (manifest["template"] or {}).get("digest", {}).get("crc32")]
    for e in manifest["segments"]:
        out.append(
            (
                e["rows"],
                e["id_min"],
                {k: d["crc32"] for k, d in e["files"].items()},
                (e["index"] or {}).get("digest", {}).get("crc32"),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="change,segments,verify,compare,build")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors for change / segments / verify")
    parser.add_argument("--build-n", type=int, default=10_000_000, help="vectors for the bulk build")
    parser.add_argument(
        "--compare-n", type=int, default=1_000_000, help="vectors for serial / parallel / Ray builds"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--budget", default="4GB", help="memory_budget of the bulk build")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where data and collections go (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segments.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        if "change" in sections:
            section_change(root, args.n, args.dim, rng)
        if "segments" in sections:
            section_segments(root, args.n, args.dim, rng, args.queries)
        if "verify" in sections:
            section_verify(root, args.n, args.dim, rng)
        if "compare" in sections:
            section_compare(root, args.compare_n, args.dim, rng)
        if "build" in sections:
            section_build(root, args.build_n, args.dim, rng, args.budget, args.queries, args.workers)
    total = time.perf_counter() - t0
    header = ["measurement", "data", "cost", "speed", "quality / target", "met"]
    lines = [
        "# segmented collections benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__}, numpy {np.__version__}; "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (nothing else running).",
        f"Command: `python benchmarks/bench_segments.py --sections {args.sections} --n {args.n} --build-n {args.build_n} "
        f"--compare-n {args.compare_n} --dim {args.dim} --budget {args.budget}`; total {total / 60:.0f} min.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows_out),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
