"""indexes.Collection against the raw FAISS index it wraps, index="auto" at scale, and filtered search.

Three measurements on clustered synthetic unit vectors (queries drawn from the same
distribution, never stored):

1. overhead: ``Collection.search`` vs ``index.search`` on the very index object the
   collection holds (same parameters), ``--queries`` queries, k=10, ``--overhead-n`` vectors,
   for ``Flat`` and for what ``auto`` picks at that size. Target ratio <= 1.05.
2. auto: ``index="auto"`` on ``--auto-n`` vectors: build time (add + save, which picks,
   trains and tunes the index), index size, peak RSS, recall@10 against exact search and
   QPS against exact (flat) search. Target recall@10 >= 0.95 at >= 10x flat QPS.
3. filtered: a 1 %-selective equality filter on the same collection: QPS and recall@10
   against exact search over the matching items, with the default planner (exact search
   over the few matches) and with the FAISS ID-selector path forced.

    python benchmarks/bench_indexes.py                      # full size (100k overhead, 1M auto)
    python benchmarks/bench_indexes.py --overhead-n 20000 --auto-n 100000 --queries 200   # quick

Prints a Markdown table and writes it to ``benchmarks/results/indexes.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexes import Collection

K = 10


def clustered(
    n: int, dim: int, rng: np.random.Generator, clusters: int = 1_000, spread: float = 0.6
) -> np.ndarray:
    """Unit vectors [n, dim] around ``clusters`` random centres, made in blocks to bound memory."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # [c, d]
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        block = centres[rng.integers(0, clusters, hi - lo)]  # [b, d]
        block += spread * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean(
            [np.intersect1d(f[f >= 0], t[t >= 0]).size / max((t >= 0).sum(), 1) for f, t in zip(found, truth)]
        )
    )


def exact(queries: np.ndarray, base: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    _, pos = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)  # [q, K]
    return ids[pos], time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_overhead(
    root: Path, n: int, dim: int, nq: int, rng: np.random.Generator, repeat: int
) -> list[list[str]]:
    """Same queries through ``Collection.search`` and through the FAISS index object it holds.

    Timed with one FAISS thread and compared on CPU time (``time.process_time``), which other
    processes on a shared machine disturb far less than wall time; wall-time ratios are shown too.
    """
    data = clustered(n + nq, dim, rng)
    x, q = data[:n], data[n:]
    rows = []
    threads = faiss.omp_get_max_threads()
    for spec in ("Flat", "auto", "IVF256,Flat"):
        name = spec.replace(",", "_")
        with Collection.create(root / f"overhead-{name}", dim, index=spec, overwrite=True) as coll:
            coll.add(x, [{"bucket": i % 100} for i in range(n)])
        faiss.omp_set_num_threads(1)
        try:
            with Collection.open(root / f"overhead-{name}", read_only=True) as coll:
                if not coll.info()["index_trained"]:
                    continue  # too few vectors to train this spec (the collection searches exactly)
                # the wrapped FAISS index, with the collection's nprobe / efSearch applied
                index = coll._index
                coll.search(q, K)
                index.search(q, K)
                cpu = {"raw": [], "collection": []}
                wall = {"raw": [], "collection": []}
                for _ in range(repeat):  # interleaved so both see the same machine load
                    raw_fn = lambda: index.search(q, K)  # noqa: B023, E731
                    coll_fn = lambda: coll.search(q, K)  # noqa: E731
                    for label, fn in (("raw", raw_fn), ("collection", coll_fn)):
                        c0, w0 = time.process_time(), time.perf_counter()
                        fn()
                        cpu[label].append(time.process_time() - c0)
                        wall[label].append(time.perf_counter() - w0)
                ratio = min(cpu["collection"]) / min(cpu["raw"])
                wall_ratio = min(wall["collection"]) / min(wall["raw"])
                rows.append(
                    [
                        f"overhead {spec} -> {coll.index_spec}",
                        f"{n:,} x {dim}",
                        f"{nq:,} queries, k={K}, 1 thread",
                        f"raw {nq / min(wall['raw']):,.0f} QPS, collection {nq / min(wall['collection']):,.0f} QPS",
                        f"CPU-time ratio {ratio:.3f} (wall {wall_ratio:.3f})",
                        "<= 1.05",
                        "yes" if ratio <= 1.05 else "no",
                    ]
                )
        finally:
            faiss.omp_set_num_threads(threads)
    return rows


def bench_auto(
    root: Path, n: int, dim: int, nq: int, rng: np.random.Generator, repeat: int
) -> list[list[str]]:
    data = clustered(n + nq, dim, rng)
    x, q = data[:n], data[n:]
    del data
    path = root / "auto"
    t0 = time.perf_counter()
    with Collection.create(path, dim, index="auto", overwrite=True) as coll:
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            coll.add(x[lo:hi], [{"bucket": i % 100} for i in range(lo, hi)])
    build = time.perf_counter() - t0
    ids = np.arange(n, dtype=np.int64)
    truth, flat_t = exact(q, x, ids)
    flat_t = min(flat_t, exact(q, x, ids)[1])
    folder = path / next(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith("v"))
    index_mb = (folder / "index.faiss").stat().st_size / 2**20
    rows = []
    with Collection.open(path, read_only=True) as coll:
        spec, params = coll.index_spec, coll.params
        _, found = coll.search(q, K)
        t = best_of(lambda: coll.search(q, K), repeat)
        rec = recall_at_k(found, truth)
        speedup = flat_t / t
        rows.append(
            [
                f"auto -> {spec} ({', '.join(f'{k}={params[k]}' for k in ('nprobe', 'efSearch', 'refine') if k in params)})",
                f"{n:,} x {dim}",
                f"build {build:.0f} s, index {index_mb:,.0f} MB, peak RSS {peak_rss_mb():,.0f} MB",
                f"{nq / t:,.0f} QPS vs flat {nq / flat_t:,.0f} QPS ({speedup:.1f}x)",
                f"recall@10 {rec:.3f}",
                "recall >= 0.95 at >= 10x",
                "yes" if rec >= 0.95 and speedup >= 10 else "no",
            ]
        )
        # 1 % selective filter: exact truth over the matching items only
        where = {"bucket": 7}
        match = ids[ids % 100 == 7]
        ftruth, _ = exact(q, x[match], match)
        fexact_t = best_of(lambda: exact(q, x[match], match), repeat)
        for label, exact_max in (
            ("planner: exact over matches", coll.exact_filter_max),
            ("FAISS ID selector forced", 0),
        ):
            coll.exact_filter_max = exact_max
            _, found = coll.search(q, K, where=where)
            t = best_of(lambda: coll.search(q, K, where=where), repeat)
            only = bool(np.isin(found[found >= 0], match).all())
            rows.append(
                [
                    f"filtered 1 % ({label})",
                    f"{n:,} x {dim}, {match.size:,} match",
                    f"only matching: {only}",
                    f"{nq / t:,.0f} QPS (exact over matches {nq / fexact_t:,.0f} QPS)",
                    f"recall@10 {recall_at_k(found, ftruth):.3f}",
                    "recall vs filtered exact",
                    "-",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead-n", type=int, default=100_000, help="vectors for the overhead comparison")
    parser.add_argument(
        "--auto-n", type=int, default=1_000_000, help="vectors for the auto / filtered runs (0 skips)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: FAISS default)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where collections are built (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "indexes.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        rows = bench_overhead(root, args.overhead_n, args.dim, args.queries, rng, args.repeat)
        if args.auto_n:
            rows += bench_auto(root, args.auto_n, args.dim, args.queries, rng, args.repeat)
        total = time.perf_counter() - t0
    header = ["measurement", "data", "setup", "speed", "quality", "target", "met"]
    lines = [
        "# indexes benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}; load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end (a shared machine: timings are under contention).",
        f"Command: `python benchmarks/bench_indexes.py --overhead-n {args.overhead_n} --auto-n {args.auto_n} "
        f"--dim {args.dim} --queries {args.queries} --repeat {args.repeat}`; total {total:.0f} s.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
