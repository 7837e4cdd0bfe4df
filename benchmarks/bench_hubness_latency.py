"""Hubness correction's cost per query: one text->image query through the ``Searcher`` on a finished
demo collection, dense against corrected (the inverted softmax the demo ranks with), each item's
penalty looked up from the table stored beside the query bank (``Searcher.prepare`` fills it first).

Two rounds of each setting, interleaved, ``--queries`` test captions each (k = 10), wall time per
query. Run it alone on the machine, after ``retrieval demo``:

    python benchmarks/bench_hubness_latency.py [--demo DIR] [--queries 200]

Prints a table and writes ``benchmarks/results/hubness_latency.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "hubness_latency.md"


def main() -> None:
    from retrieval.model import load_model
    from retrieval.paths import cache_dir
    from retrieval.search import Hubness, Searcher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=None, help="finished demo folder (default: the toolkit cache's)")
    parser.add_argument("--data", default=None, help="the OpenMoji dataset folder (default: the toolkit cache's, 72 px)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    demo = Path(args.demo) if args.demo else cache_dir("demo")
    test = (Path(args.data) if args.data else cache_dir("openmoji") / "72px") / "test.jsonl"
    captions = [json.loads(line)["caption"] for line in test.read_text().splitlines() if line.strip()]
    captions = captions[: args.queries]
    model = load_model(str(demo / "run" / "best"), device="cpu")
    times: dict[str, list[float]] = {}
    for _ in range(2):
        for label, kwargs in (("dense", {}), ("hubness (isoftmax)", {"hubness": Hubness("isoftmax")})):
            with Searcher(model, demo / "collection", **kwargs) as searcher:
                searcher.prepare()
                for q in captions[:10]:  # warm-up
                    searcher.text_to_image(q, k=10)
                for q in captions:
                    t0 = time.perf_counter()
                    searcher.text_to_image(q, k=10)
                    times.setdefault(label, []).append(1000 * (time.perf_counter() - t0))
    dense = statistics.median(times["dense"])
    lines = [
        "# Hubness correction: cost per query",
        "",
        f"`python benchmarks/bench_hubness_latency.py`; demo `{demo}`; {platform.machine()}, {os.cpu_count()} cores; "
        f"1-minute load {os.getloadavg()[0]:.2f} at the end; {len(captions)} test captions x 2 rounds, k = 10.",
        "",
        "| setting | p50 ms | p90 ms | p50 / dense |",
        "|---|---:|---:|---:|",
    ]
    for label, values in times.items():
        values.sort()
        p50 = statistics.median(values)
        lines.append(f"| {label} | {p50:.2f} | {values[int(0.9 * len(values))]:.2f} | {p50 / dense:.2f} |")
    lines += ["", "Target: the corrected query within 1.25x of the dense one."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
