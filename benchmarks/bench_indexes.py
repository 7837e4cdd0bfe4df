"""indexes.Collection against the raw FAISS index it wraps, index="auto" on easy and hard data, filtered search.

Measurements on synthetic unit vectors drawn around random centres (queries from the same
distribution, never stored):

1. overhead: ``Collection.search`` vs ``index.search`` on the very index object the
   collection holds (same parameters), ``--queries`` queries, k=10, ``--overhead-n`` vectors.
   Target ratio <= 1.05.
2. auto, on ``--auto-n`` vectors within ``--budget``, for every data setting of ``--settings``:
   ``clustered`` (1,000 centres, noise 0.6: well separated) and ``overlapping`` (4,096 centres,
   noise of standard deviation ``--hard-noise`` per dimension: clusters overlap), each with queries
   from the data's distribution (``same``) and with cross-modal-like queries shifted by one common
   offset (``shifted``, as text embeddings sit apart from image embeddings; a sample of them is
   stored with the collection as its tuning queries). Reported: what auto chose and why, build
   time, recall@10 against exact search, batch QPS and single-query p50 against exact flat search.
   Targets: batch QPS >= exact and single-query p50 <= exact at recall@10 >= 0.95 everywhere;
   >= 10x exact on the clustered data.
3. filtered: a 1 %-selective equality filter on the clustered collection: QPS and recall@10
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexes import Collection

K = 10


def clustered(
    n: int,
    dim: int,
    rng: np.random.Generator,
    clusters: int = 1_000,
    spread: float = 0.6,
    centres: np.ndarray | None = None,
) -> np.ndarray:
    """Unit vectors [n, dim] around ``clusters`` random centres (noise ``spread`` per dimension),
    made in blocks to bound memory."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # [c, d]
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        block = centres[rng.integers(0, centres.shape[0], hi - lo)]  # [b, d]
        block = block + spread * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def shifted(queries: np.ndarray, rng: np.random.Generator, gap: float = 0.8) -> np.ndarray:
    """Queries moved by one common offset of length ``gap`` and renormalised: the modality gap of
    CLIP-like models (caption embeddings sit apart from image embeddings)."""
    offset = rng.standard_normal(queries.shape[1]).astype(np.float32)
    offset *= gap / np.linalg.norm(offset)
    out = queries + offset
    return out / np.linalg.norm(out, axis=1, keepdims=True)


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
    for spec in ("HNSW32", "IVF256,Flat"):
        name = spec.replace(",", "_")
        with Collection.create(root / f"overhead-{name}", dim, index=spec, overwrite=True) as coll:
            coll.add(x, [{"bucket": i % 100} for i in range(n)])
        faiss.omp_set_num_threads(1)
        try:
            with Collection.open(root / f"overhead-{name}", read_only=True) as coll:
                if not coll.info()["index_trained"]:
                    continue  # too few vectors to train this spec (the collection searches exactly)
                # the same index as a user would hold it in memory, with the collection's nprobe / efSearch
                seg = coll._segments[0]
                record = seg.entry["index"]
                if record["kind"] == "lists":  # the shared quantizer, the same lists, loaded in RAM
                    index = faiss.clone_index(coll._template.trained)
                    index.add(np.ascontiguousarray(seg.vectors))
                else:  # the segment's graph, read into RAM
                    index = faiss.read_index(str(seg.folder / record["file"]))
                for key, value in coll.params.items():
                    if key == "nprobe":
                        faiss.extract_index_ivf(index).nprobe = int(value)
                    elif key == "efSearch":
                        faiss.downcast_index(index).hnsw.efSearch = int(value)
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


def exact_timing(q: np.ndarray, x: np.ndarray, repeat: int) -> tuple[np.ndarray, float, float]:
    """Exact top-10 ids, batch seconds (best of ``repeat``) and single-query p50 of brute force over ``x``."""
    ids = np.arange(x.shape[0], dtype=np.int64)
    truth, _ = exact(q, x, ids)
    batch = best_of(lambda: exact(q, x, ids), repeat)
    singles = []
    for i in range(min(20, q.shape[0])):
        t0 = time.perf_counter()
        faiss.knn(q[i : i + 1], x, K, metric=faiss.METRIC_INNER_PRODUCT)
        singles.append(time.perf_counter() - t0)
    return truth, batch, float(np.median(singles))


SETTINGS = {
    "clustered": {"clusters": 1_000, "spread": 0.6},
    "overlapping": {"clusters": 4_096, "spread": None},  # spread: --hard-noise
}


def bench_auto(
    root: Path,
    n: int,
    dim: int,
    nq: int,
    rng: np.random.Generator,
    repeat: int,
    settings: list[str],
    budget: str,
    hard_noise: float,
) -> list[list[str]]:
    rows = []
    for setting in settings:
        data_name, query_name = setting.split(":")
        conf = SETTINGS[data_name]
        spread = conf["spread"] if conf["spread"] is not None else hard_noise
        centres = rng.standard_normal((conf["clusters"], dim)).astype(np.float32)
        x = clustered(n, dim, rng, spread=spread, centres=centres)
        q = clustered(nq, dim, rng, spread=spread, centres=centres)
        tune_q = clustered(200, dim, rng, spread=spread, centres=centres)
        if query_name == "shifted":
            offset_rng = np.random.default_rng(99)
            q = shifted(q, offset_rng)
            tune_q = shifted(tune_q, np.random.default_rng(99))
        path = root / f"auto-{data_name}-{query_name}"
        t0 = time.perf_counter()
        with Collection.create(path, dim, index="auto", memory_budget=budget, overwrite=True) as coll:
            for lo in range(0, n, 100_000):
                hi = min(n, lo + 100_000)
                coll.add(x[lo:hi], [{"bucket": i % 100} for i in range(lo, hi)])
            if query_name == "shifted":
                coll.set_tuning_queries({"shifted queries": (tune_q, None)})
        build = time.perf_counter() - t0
        truth, flat_t, flat_single = exact_timing(q, x, repeat)
        with Collection.open(path, read_only=True) as coll:
            spec, params, decision = coll.index_spec, coll.params, coll.info()["auto"]
            _, found = coll.search(q, K)
            t = best_of(lambda c=coll, qq=q: c.search(qq, K), repeat)
            singles = []
            for i in range(min(100, nq)):
                t1 = time.perf_counter()
                coll.search(q[i : i + 1], K)
                singles.append(time.perf_counter() - t1)
            single = float(np.median(singles))
            rec = recall_at_k(found, truth)
            speedup = flat_t / t
            tried = "; ".join(
                f"{c['spec']} {c['verdict']}"
                + (f" ({c.get('speedup')}x at recall {c.get('recall')})" if "speedup" in c else "")
                for c in decision.get("tried", [])
            )
            knobs = ", ".join(f"{k}={params[k]}" for k in ("nprobe", "efSearch", "refine") if k in params)
            easy = data_name == "clustered"
            met = rec >= 0.95 and speedup >= (10 if easy else 0.95) and single <= flat_single * 1.05
            rows.append(
                [
                    f"auto, {data_name} data, {query_name} queries -> {spec}" + (f" ({knobs})" if knobs else ""),
                    f"{n:,} x {dim}, budget {budget}" + (f", noise {spread}" if not easy else ""),
                    f"build {build:.0f} s; tried: {tried or 'none'}",
                    f"{nq / t:,.0f} QPS vs exact {nq / flat_t:,.0f} QPS ({speedup:.2f}x); single p50 "
                    f"{single * 1e3:.2f} ms vs exact {flat_single * 1e3:.2f} ms",
                    f"recall@10 {rec:.3f}",
                    ">= 10x exact" if easy else ">= exact, p50 <= exact",
                    "yes" if met else "no",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
            if data_name == "clustered" and query_name == "same":
                rows += bench_filtered(coll, x, q, repeat)
        del x
    return rows


def bench_filtered(coll: Collection, x: np.ndarray, q: np.ndarray, repeat: int) -> list[list[str]]:
    """1 % selective filter: exact truth over the matching items only."""
    rows = []
    n = x.shape[0]
    nq = q.shape[0]
    ids = np.arange(n, dtype=np.int64)
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
                f"{n:,} x {x.shape[1]}, {match.size:,} match",
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
    parser.add_argument(
        "--settings",
        default="clustered:same,clustered:shifted,overlapping:same,overlapping:shifted",
        help="data:queries pairs for the auto runs (data clustered|overlapping, queries same|shifted)",
    )
    parser.add_argument("--budget", default="2GB", help="memory_budget of the auto collections")
    parser.add_argument("--hard-noise", type=float, default=1.5, help="noise per dimension of the overlapping data")
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
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        rows = bench_overhead(root, args.overhead_n, args.dim, args.queries, rng, args.repeat)
        if args.auto_n:
            rows += bench_auto(
                root,
                args.auto_n,
                args.dim,
                args.queries,
                rng,
                args.repeat,
                args.settings.split(","),
                args.budget,
                args.hard_noise,
            )
        total = time.perf_counter() - t0
    header = ["measurement", "data", "setup", "speed", "quality", "target", "met"]
    lines = [
        "# indexes benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}; load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end (before: {load_before[0]:.1f}; nothing else ran).",
        f"Command: `python benchmarks/bench_indexes.py --overhead-n {args.overhead_n} --auto-n {args.auto_n} "
        f"--dim {args.dim} --queries {args.queries} --repeat {args.repeat} --budget {args.budget} "
        f"--settings {args.settings}`; total {total / 60:.0f} min.",
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
