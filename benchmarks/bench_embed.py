"""Embedding throughput against a plain loop, and peak memory as the corpus grows.

1. Throughput: ``embed_corpus`` (DataLoader with workers, shards, collection) against a plain
   loop doing the same work one step after the other (PIL decode + transform + the same model
   forward, same batch size and torch threads), for images and for captions.
2. Peak RSS: ``embed_corpus`` over 10k and 100k synthetic PNGs, each size in its own
   subprocess (``ru_maxrss`` of the main process and, separately, of its decoding workers).

Prints a table and writes ``benchmarks/results/bench_embed.md``.

    python benchmarks/bench_embed.py [--n 2000] [--sizes 10000,100000] [--threads 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [
    "red",
    "green",
    "blue",
    "small",
    "large",
    "dog",
    "cat",
    "car",
    "tree",
    "sky",
    "house",
    "boat",
    "on",
    "a",
]
# The small from-scratch towers (CNN image tower, GRU text tower) for the throughput runs.
SMALL = dict(image_tower="cnn", text_tower="gru")
# Tiny towers for the memory runs: the point there is how memory grows with the corpus, not speed.
TINY = dict(
    image_tower="cnn",
    text_tower="gru",
    embed_dim=64,
    image_size=32,
    image_width=8,
    image_layers=2,
    text_width=16,
    text_layers=1,
    vocab_size=300,
)


def write_corpus(folder: Path, n: int, side: int = 48) -> Path:
    """``n`` small noisy PNGs and a JSONL manifest with one caption each (reused when present)."""
    from PIL import Image

    manifest = folder / f"corpus_{n}.jsonl"
    if manifest.exists():
        return manifest
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(manifest.with_suffix(".tmp"), "w") as fh:
        for i in range(n):
            path = images / f"{i:07d}.png"
            if not path.exists():
                base = rng.integers(0, 255, size=3)
                pixels = np.clip(base + rng.normal(0, 30, size=(side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path)
            caption = " ".join(rng.choice(WORDS, size=6))
            fh.write(json.dumps({"image": str(path), "caption": caption}) + "\n")
    manifest.with_suffix(".tmp").rename(manifest)
    return manifest


def build(config_kwargs: dict, captions: list[str]):
    import torch

    from retrieval.config import ModelConfig
    from retrieval.model import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(**config_kwargs), captions=captions, device="cpu")


def plain_images(model, paths: list[str], batch_size: int) -> float:
    """Decode, transform and encode one batch after the other; returns seconds."""
    import torch
    from PIL import Image

    transform = model.image_transform()
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(paths), batch_size):
            pixels = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[lo : lo + batch_size]]
            )  # [B, 3, H, W]
            model.image_features(pixels)
    return time.perf_counter() - started


def plain_texts(model, captions: list[str], batch_size: int) -> float:
    import torch

    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(captions), batch_size):
            model.text_features(model.tokenize(captions[lo : lo + batch_size]))
    return time.perf_counter() - started


def ours(model, manifest: Path, out: Path, modality: str, batch_size: int, workers: int) -> float:
    from retrieval.config import EmbedConfig
    from retrieval.embed import embed_corpus

    config = EmbedConfig(
        modality=modality, batch_size=batch_size, num_workers=workers, progress=False, index="Flat"
    )
    started = time.perf_counter()
    summary = embed_corpus(model, manifest, out, config)
    seconds = time.perf_counter() - started
    assert summary.skipped_total == 0 and summary.embedded > 0, summary
    return seconds


def rss_child(manifest: Path, out: Path, batch_size: int, workers: int, threads: int) -> None:
    """Run in a subprocess: embed the images of ``manifest``, print peak RSS as JSON."""
    import torch

    torch.set_num_threads(threads)
    captions = [json.loads(line)["caption"] for line in manifest.read_text().splitlines()[:500]]
    model = build(TINY, captions)
    seconds = ours(model, manifest, out, "images", batch_size, workers)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images for the throughput runs (captions: 10x)")
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes for the peak-RSS runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding workers (memory runs)")
    parser.add_argument(
        "--image-workers", default="0,1", help="decoding workers compared in the image throughput runs"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side (best kept)")
    parser.add_argument(
        "--work-dir", default=None, help="where the synthetic corpus goes (default: a temp dir)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_embed.md"))
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child), Path(args.rss_out), args.batch_size, args.workers, args.threads)
        return

    import torch

    from retrieval.config import ModelConfig

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.work_dir:
        work = Path(args.work_dir)
    else:  # the synthetic corpus (thousands of images by default) is removed when the run ends
        work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    # 1. throughput with the default small towers
    image_manifest = write_corpus(work, args.n)
    text_manifest = write_corpus(work, 10 * args.n)
    paths = [json.loads(line)["image"] for line in image_manifest.read_text().splitlines()]
    captions = [json.loads(line)["caption"] for line in text_manifest.read_text().splitlines()]
    model = build(SMALL, captions)
    table = []
    image_workers = [int(w) for w in args.image_workers.split(",")]
    runs = [
        (
            "images",
            image_manifest,
            len(paths),
            image_workers,
            lambda: plain_images(model, paths, args.batch_size),
        ),
        ("texts", text_manifest, len(captions), [0], lambda: plain_texts(model, captions, args.batch_size)),
    ]
    # One untimed run of each side on a small corpus first, so no timed run pays for first-use
    # costs (imports, allocator and kernel warm-up) that the other side has already paid.
    warm = write_corpus(work, 2 * args.batch_size)
    plain_images(model, paths[: 2 * args.batch_size], args.batch_size)
    plain_texts(model, captions[: 2 * args.batch_size], args.batch_size)
    for modality, w in [("images", w) for w in image_workers] + [("texts", 0)]:
        ours(model, warm, work / f"warm_{modality}_{time.time_ns()}", modality, args.batch_size, w)
    for modality, manifest, count, workers, plain in runs:
        plain_s = float("inf")
        ours_s = dict.fromkeys(workers, float("inf"))
        for r in range(args.repeats):  # alternate, keep the best of each: the machine's load drifts
            order: list[int | None] = [None, *workers]  # None: the plain loop
            for w in order if r % 2 == 0 else order[::-1]:  # which side goes first alternates too
                gc.collect()
                if w is None:
                    plain_s = min(plain_s, plain())
                else:
                    out = work / f"coll_{modality}_{time.time_ns()}"
                    ours_s[w] = min(ours_s[w], ours(model, manifest, out, modality, args.batch_size, w))
        for w in workers:
            table.append((modality, w, count, count / plain_s, count / ours_s[w], plain_s / ours_s[w]))
    cfg = ModelConfig(**SMALL)
    lines += [
        "# Embedding benchmark\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs while measured (expect noise). "
        f"torch threads {args.threads}, batch size {args.batch_size}.\n",
        f"## Throughput, {args.n:,} images / {10 * args.n:,} captions, small towers (CNN {cfg.image_size}px, GRU {cfg.text_width}x{cfg.text_layers}, "
        f"dim {cfg.embed_dim})\n",
        "`plain` decodes with PIL, transforms and runs the same forward one batch after the other; `embed_corpus` "
        "also reads the manifest, writes shards, the collection (Flat) and its metadata. With 0 workers it "
        "decodes in a helper thread of the main process; with N > 0, in N DataLoader processes. "
        f"Best of {args.repeats} alternating runs each (which side goes first alternates; one untimed warm-up run "
        "of each side before). Target ratio >= 1.0.\n",
        "| modality | decoding workers | items | plain items/s | embed_corpus items/s | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {m} | {w} | {n:,} | {p:.1f} | {o:.1f} | {r:.2f} |" for m, w, n, p, o, r in table],
        "",
    ]

    # 2. peak RSS per corpus size, each in a fresh process
    rss = []
    for n in sizes:
        manifest = write_corpus(work, n)
        out = work / f"rss_{n}_{time.time_ns()}"
        cmd = [
            sys.executable,
            __file__,
            "--rss-child",
            str(manifest),
            "--rss-out",
            str(out),
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        rss.append((n, stats["self_mb"], stats["workers_mb"], n / stats["seconds"]))
    lines += [
        f"## Peak RSS, images only, {args.workers} decoding worker(s), tiny towers (dim {TINY['embed_dim']}, {TINY['image_size']}px), Flat collection\n",
        "| images | main process peak RSS MB | decoding worker peak RSS MB | images/s |",
        "|---:|---:|---:|---:|",
        *[f"| {n:,} | {s:.0f} | {w:.0f} | {ips:.0f} |" for n, s, w, ips in rss],
        "",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
