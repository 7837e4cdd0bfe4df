"""The same collection API on a local folder and on a Milvus standalone server: ingest, build, recall, speed.

Clustered unit vectors (the generator of ``bench_indexes.py``; queries drawn from the same
distribution, never stored), each item with metadata ``{"bucket": i % 100}``. For each
backend, through ``indexes.create_collection`` / ``open_collection`` only:

1. ingest: ``add`` in batches of ``--batch`` (vectors per second);
2. build: ``save()`` — for ``index="auto"`` it picks, builds and tunes the index (local: FAISS
   training and adding; Milvus: flush, index build on the server, tuning against exact search
   streamed from the server);
3. recall@10 against exact search (numpy/FAISS brute force over the same vectors), batch QPS
   (all ``--queries`` in one call) and single-query p50 latency (``--single`` queries one at a
   time); both backends are tuned to the same recall target (0.95), so speed is compared at
   (about) equal recall;
4. a 1 %-selective filter ``{"bucket": 7}``: QPS and recall@10 against exact search over the
   matching items;
5. where Milvus's time goes: a bare pymilvus search (no toolkit code) and a Strong-consistency
   search, single query, p50.

    python benchmarks/bench_milvus.py                       # 1M x 256, starts a Milvus standalone server
    python benchmarks/bench_milvus.py --n 20000 --queries 200 --single 50    # a quick check
    python benchmarks/bench_milvus.py --uri milvus://10.0.0.5:19530          # an existing server

The embedded server is the PyPI ``milvus`` package (``pip install 'siamese-retrieval[distributed]'``),
started on 127.0.0.1 with its own base folder under ``--workdir`` and stopped at the end.
Prints a Markdown table and writes it to ``benchmarks/results/milvus.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from bench_indexes import best_of, clustered, exact, recall_at_k

from indexes import create_collection, open_collection

K = 10
WHERE = {"bucket": 7}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p50_ms(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    fn(queries[0])  # warm-up
    times = []
    for row in queries:
        t0 = time.perf_counter()
        fn(row)
        times.append(time.perf_counter() - t0)
    return 1_000 * statistics.median(times)


def bench_backend(
    label: str, location: str, x: np.ndarray, q: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    n = x.shape[0]
    out: dict[str, Any] = {"label": label}
    t0 = time.perf_counter()
    coll = create_collection(location, x.shape[1], index=args.index, overwrite=True)
    try:
        for lo in range(0, n, args.batch):
            hi = min(n, lo + args.batch)
            coll.add(x[lo:hi], [{"bucket": i % 100} for i in range(lo, hi)])
        out["ingest_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        coll.save()
        out["build_s"] = time.perf_counter() - t1
    finally:
        coll.close()
    with open_collection(location, read_only=True) as coll:
        info = coll.info()
        out["spec"], out["params"] = info["index_spec"], info["params"]
        ids = np.arange(n, dtype=np.int64)
        truth, _ = exact(q, x, ids)
        _, found = coll.search(q, K)
        out["recall"] = recall_at_k(found, truth)
        out["batch_qps"] = q.shape[0] / best_of(lambda: coll.search(q, K), args.repeat)
        single = q[: args.single]
        out["p50_ms"] = p50_ms(lambda row: coll.search(row, K), single)
        match = ids[ids % 100 == 7]
        ftruth, _ = exact(q, x[match], match)
        _, found = coll.search(q, K, where=WHERE)
        out["filter_recall"] = recall_at_k(found, ftruth)
        out["filter_only"] = bool(np.isin(found[found >= 0], match).all())
        out["filter_qps"] = q.shape[0] / best_of(lambda: coll.search(q, K, where=WHERE), args.repeat)
        out["filter_p50_ms"] = p50_ms(lambda row: coll.search(row, K, where=WHERE), single)
        table = getattr(coll, "_table", None)
        if table is not None:  # Milvus: the same search without the toolkit, and with Strong consistency
            from indexes.milvus import kinds

            params = kinds.search_params(coll._index, coll.params, K)
            metric = {"ip": "IP", "l2": "L2"}[coll.metric]
            request = {
                "limit": K,
                "filter": "",
                "output_fields": ["id"],
                "search_params": {"metric_type": metric, "params": params},
            }

            def bare(row: np.ndarray, level: str) -> Any:
                return table.client.call(
                    "searching", "search", table.name, data=[row], consistency_level=level, **request
                )

            out["bare_p50_ms"] = p50_ms(lambda row: bare(row, "Session"), single)
            out["strong_p50_ms"] = p50_ms(
                lambda row: bare(row, "Strong"), single[: max(10, len(single) // 5)]
            )
            out["version"] = info.get("server_version")
            out["index_rows"] = info.get("index_rows")
    return out


def start_server(workdir: Path) -> tuple[Any, str]:
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(workdir / "milvus-server"))
    server.listen_port = free_port()
    t0 = time.perf_counter()
    server.start()
    print(
        f"Milvus standalone started in {time.perf_counter() - t0:.1f} s on port {server.listen_port}",
        flush=True,
    )
    return server, f"milvus://127.0.0.1:{server.listen_port}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def fmt_params(params: dict[str, Any]) -> str:
    keys = ("nprobe", "efSearch", "refine")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params) or "exact"


def table(results: list[dict[str, Any]], n: int, dim: int, nq: int, single: int) -> list[str]:
    rows = [
        ("ingest (add)", lambda r: f"{n / r['ingest_s']:,.0f} vectors/s ({r['ingest_s']:.1f} s)"),
        ("save(): total (index build + tuning)", lambda r: f"{r['build_s']:.1f} s"),
        ("of which: index build", lambda r: seconds(r["params"].get("build_seconds"))),
        (
            "of which: tuning (exact truth + parameter search)",
            lambda r: seconds(
                (r["params"].get("exact_seconds") or 0) + (r["params"].get("tune_seconds") or 0) or None
            ),
        ),
        ("index (auto)", lambda r: f"{r['spec']} ({fmt_params(r['params'])})"),
        ("recall@10 vs exact", lambda r: f"{r['recall']:.3f}"),
        (f"batch QPS ({nq:,} queries, one call)", lambda r: f"{r['batch_qps']:,.0f}"),
        (f"single-query p50 ({single} queries)", lambda r: f"{r['p50_ms']:.2f} ms"),
        (
            "filtered 1 %: recall@10 vs exact over matches",
            lambda r: f"{r['filter_recall']:.3f} (only matching: {r['filter_only']})",
        ),
        ("filtered 1 %: batch QPS", lambda r: f"{r['filter_qps']:,.0f}"),
        ("filtered 1 %: single-query p50", lambda r: f"{r['filter_p50_ms']:.2f} ms"),
        (
            "bare pymilvus search p50 (no toolkit code)",
            lambda r: f"{r['bare_p50_ms']:.2f} ms" if "bare_p50_ms" in r else "-",
        ),
        (
            "Strong-consistency search p50",
            lambda r: f"{r['strong_p50_ms']:.2f} ms" if "strong_p50_ms" in r else "-",
        ),
    ]
    header = ["measurement", *(r["label"] for r in results)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cell in rows:
        lines.append("| " + " | ".join([name, *(cell(r) for r in results)]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors stored")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1_000, help="queries for recall and batch QPS")
    parser.add_argument("--single", type=int, default=200, help="queries sent one at a time for p50 latency")
    parser.add_argument("--batch", type=int, default=10_000, help="vectors per add() call")
    parser.add_argument("--index", default="auto", help="index spec for both backends (default auto)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed repetitions of batch searches; the best is kept"
    )
    parser.add_argument(
        "--uri", default=None, help="an existing Milvus server (milvus://HOST:PORT); default: start one"
    )
    parser.add_argument("--skip-local", action="store_true", help="measure Milvus only")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where collections and the server live (default: temp)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "milvus.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = clustered(args.n + args.queries, args.dim, rng)
    x, q = data[: args.n], data[args.n :]
    del data
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        if not args.skip_local:
            results.append(bench_backend("local folder (FAISS)", str(root / "local"), x, q, args))
            print(f"local done in {time.perf_counter() - started:.0f} s", flush=True)
        server, uri = (None, args.uri.rstrip("/")) if args.uri else start_server(root)
        try:
            label = "Milvus standalone" if server is not None else f"Milvus at {uri}"
            results.append(bench_backend(label, f"{uri}/bench_milvus", x, q, args))
        finally:
            if server is not None:
                server.stop()
    total = time.perf_counter() - started
    milvus = results[-1]
    lines = [
        "# Milvus benchmark: the same collection API on a local folder and on a Milvus server",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__}, numpy {np.__version__}, "
        f"Milvus {milvus.get('version')}; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end.",
        f"Data: {args.n:,} clustered unit vectors x {args.dim}, metadata {{bucket: i % 100}}; {args.queries:,} fresh "
        f"queries, k={K}; filter {WHERE} (1 %).",
        f"Command: `python benchmarks/bench_milvus.py --n {args.n} --dim {args.dim} --queries {args.queries} "
        f"--single {args.single} --batch {args.batch} --index {args.index}`; total {total:.0f} s.",
        "",
        *table(results, args.n, args.dim, args.queries, args.single),
        "",
        f"Milvus index rows after save: {milvus.get('index_rows')}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
