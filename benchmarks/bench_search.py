"""Single-query text -> image latency on a 100k-item collection: encode + search + metadata.

Builds the default small twin encoder (CNN image tower, GRU text tower, random weights: latency
does not depend on training), fills collections of ``--n`` image items with random unit vectors
and realistic metadata, under the model's fingerprint, then times ``Searcher.text_to_image``
one query at a time (each call encodes the query, searches with the modality filter and
fetches metadata). Prints a table and writes ``benchmarks/results/bench_search.md``.

    python benchmarks/bench_search.py [--n 100000] [--queries 300] [--k 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexes import Collection
from retrieval.config import ModelConfig
from retrieval.model import build_model
from retrieval.search import Searcher

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "small",
    "large",
    "dog",
    "cat",
    "car",
    "tree",
    "sky",
    "house",
    "boat",
    "bird",
    "on",
    "under",
    "near",
    "a",
    "the",
    "with",
]
TARGET_P50_MS = 15.0


def _captions(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def build_collection(
    path: Path, model, n: int, index: str, rng: np.random.Generator, mixed: bool = False
) -> float:
    """A collection of ``n`` image items (``mixed``: every other item a caption); returns build seconds.

    Vectors are clustered like real embeddings (uniform random vectors in 256-d are the worst
    case for any ANN index): 1,000 random unit centres, each item a centre plus noise
    (cosine to its centre about 0.8), renormalised."""
    started = time.perf_counter()
    dim = model.embed_dim
    centres = rng.standard_normal((1000, dim)).astype(np.float32)  # [C, D]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with Collection.create(path, dim, index=index, fingerprint=model.fingerprint()) as coll:
        for lo in range(0, n, 20_000):
            m = min(n, lo + 20_000) - lo
            noise = rng.standard_normal((m, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))  # [m, D]
            vectors = centres[rng.integers(0, len(centres), m)] + noise  # [m, D]
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            metadata = [
                {
                    "modality": "text" if mixed and (lo + i) % 2 else "image",
                    "path": f"/data/images/{lo + i:07d}.jpg",
                    "caption": c,
                    "image_id": str(lo + i),
                }
                for i, c in enumerate(_captions(rng, m))
            ]
            coll.add(vectors, metadata)
    return time.perf_counter() - started


def time_queries(searcher: Searcher, queries: list[str], k: int) -> np.ndarray:
    for q in queries[:20]:  # warm-up
        searcher.text_to_image(q, k=k)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        hits = searcher.text_to_image(q, k=k)
        times.append(time.perf_counter() - t0)
        assert len(hits) == k
    return np.array(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items in the collection")
    parser.add_argument("--queries", type=int, default=300, help="timed single queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument(
        "--runs",
        default="small:auto;small:Flat;small:auto:mixed;default:auto",
        help="';'-separated model:index[:mixed] runs (model small = cnn+gru, default = ModelConfig())",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_search.md"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = {
        "small": ModelConfig(image_tower="cnn", text_tower="gru"),  # the small from-scratch towers
        "default": ModelConfig(),  # the default recipe (a locked MiniLM text tower)
    }
    queries = _captions(rng, args.queries)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for name in args.runs.split(";"):
            model_name, spec, variant = [*name.split(":"), "", ""][:3]
            config = models[model_name]
            model = build_model(config, captions=_captions(rng, 2000), device="cpu").eval()
            path = Path(tmp) / f"{len(rows)}"
            build_s = build_collection(path, model, args.n, spec, rng, mixed=variant == "mixed")
            with Searcher(model, path) as searcher:
                chosen = searcher.collection.index_spec
                total = time_queries(searcher, queries, args.k)
                # The parts, for the record: encoding alone and search + metadata alone.
                t0 = time.perf_counter()
                vectors = [searcher.encode_texts([q]) for q in queries]
                encode = (time.perf_counter() - t0) * 1000.0 / len(queries)
                t0 = time.perf_counter()
                for v in vectors:
                    searcher.search_vectors(v, args.k, modality="image")
                search = (time.perf_counter() - t0) * 1000.0 / len(queries)
            towers = f"{config.image_tower}+{config.text_tower}"
            label = f"{spec}{' (half captions)' if variant == 'mixed' else ''}"
            p50, p99 = np.percentile(total, 50), np.percentile(total, 99)
            rows.append((model_name, towers, label, chosen, build_s, p50, p99, encode, search))

    header = (
        "| model | towers | index requested | index built | build s | p50 ms | p99 ms | encode ms (mean) "
        "| search+metadata ms (mean) |\n|---|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {m} | {t} | {label} | {chosen} | {b:.1f} | {p50:.2f} | {p99:.2f} | {enc:.2f} | {se:.2f} |\n"
        for m, t, label, chosen, b, p50, p99, enc, se in rows
    )
    small_auto = [r[5] for r in rows if r[0] == "small" and r[2] == "auto"]
    verdict = ("meets" if small_auto[0] <= TARGET_P50_MS else "misses") if small_auto else "not measured"
    text = (
        f"# Search latency: single text -> image query, {args.n:,} items\n\n"
        f"Random weights (latency does not depend on training); {args.queries} queries, k={args.k}, "
        f"{args.threads} thread(s); each query = encode + search + metadata of the hits. All items are images "
        f"(the searcher then skips the modality filter) except in 'half captions' rows, where the search is "
        f"filtered on modality. Vectors are clustered like real embeddings.\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs "
        f"while measured: expect noise).\n\n"
        + header
        + body
        + f"\nTarget p50 <= {TARGET_P50_MS:.0f} ms with the small towers and the auto index: **{verdict}**.\n"
    )
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
