"""Evaluation time and peak memory: chunked retrieval metrics up to 100k texts x 100k images.

Random unit vectors (dim 256), captions = noisy copies of their image vector. Each
case runs in a fresh subprocess so its peak RSS is its own. The dense reference
(the whole score matrix) is run only where it fits.

    python benchmarks/bench_eval.py                 # full table (100k x 100k takes minutes on 2 cores)
    python benchmarks/bench_eval.py --quick         # small cases only

Prints a table and writes it to benchmarks/results/eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "eval.md"

CASE_CODE = r"""
import json, resource, sys, time
import numpy as np, torch
from retrieval.evaluate import retrieval_metrics, retrieval_metrics_from_embeddings

n_images, per_image, dim, chunk, mode = json.loads(sys.argv[1])
gen = torch.Generator().manual_seed(0)
image = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=1)  # [I, D]
g = torch.arange(n_images).repeat_interleave(per_image)  # [T]
text = torch.nn.functional.normalize(image[g] + 3.5 * torch.randn(len(g), dim, generator=gen) / dim**0.5, dim=1)
del gen
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "chunked":
    m = retrieval_metrics_from_embeddings(text, image, g, ks=(1, 5, 10), chunk_size=chunk, device="cpu")
else:
    m = retrieval_metrics(text @ image.T, g, ks=(1, 5, 10))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "input_mb": base / 1024,
                  "t2i_R@10": m["t2i/R@10"], "i2t_R@10": m["i2t/R@10"]}))
"""


def run_case(n_images: int, per_image: int, dim: int, chunk: int, mode: str) -> dict:
    args = json.dumps([n_images, per_image, dim, chunk, mode])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-c", CASE_CODE, args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 100k x 100k case")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/eval.md")
    args = parser.parse_args()

    cases = [
        (10_000, 1, 4096, "dense"),
        (10_000, 1, 4096, "chunked"),
        (20_000, 5, 4096, "chunked"),  # 100k captions, 5 per image
    ]
    if not args.quick:
        cases += [(100_000, 1, 4096, "chunked")]
    rows = []
    for n_images, per_image, chunk, mode in cases:
        started = time.strftime("%H:%M:%S")
        r = run_case(n_images, per_image, args.dim, chunk, mode)
        n_texts = n_images * per_image
        rows.append(
            f"| {n_texts:,} x {n_images:,} | {mode} | {chunk if mode == 'chunked' else '-'} | "
            f"{r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['input_mb']:.0f} | "
            f"{r['t2i_R@10']:.4f} | {r['i2t_R@10']:.4f} |"
        )
        print(f"[{started}] {rows[-1]}", flush=True)

    header = [
        "# Evaluation: time and peak memory",
        "",
        f"Random unit vectors, dim {args.dim}; t2i and i2t metrics (R@1/5/10, true R, mAP, nDCG, MRR, ranks).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other jobs while measured), torch {__import__('torch').__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}. Run {time.strftime('%Y-%m-%d %H:%M')}.",
        "Peak RSS is the whole process (including the embeddings); 'over inputs' subtracts the RSS before scoring.",
        "",
        "| texts x images | mode | chunk | seconds | peak RSS MB | over inputs MB | t2i R@10 | i2t R@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    table = "\n".join([*header, *rows]) + "\n"
    print("\n" + table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
