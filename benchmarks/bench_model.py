"""Model-side costs: building and running tiny and default twin encoders, encoding throughput,
save/load/fingerprint time, and how fast pairs are read and images decoded.

    python benchmarks/bench_model.py            # full table
    python benchmarks/bench_model.py --quick    # fewer repetitions, smaller corpora

Prints a table and writes it to benchmarks/results/model.md. Each figure is the median of
several runs after one warm-up, on the CPU (CUDA is used by the library when present; this
script pins the CPU so figures compare across machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.config import ModelConfig
from retrieval.data import ImageTransform, load_image, read_pairs
from retrieval.model import TwinEncoder, build_model

RESULTS = Path(__file__).resolve().parent / "results" / "model.md"
TINY = {
    "embed_dim": 32,
    "image_size": 32,
    "image_width": 16,
    "image_layers": 2,
    "image_heads": 2,
    "patch_size": 8,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "vocab_size": 300,
    "context_length": 16,
    "lock_text": False,
}
WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "dog",
    "cat",
    "car",
    "boat",
    "tree",
    "house",
    "on",
    "in",
    "near",
    "running",
    "sitting",
]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def pictures(n: int, side: int = 256) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side + 32, 3), dtype=np.uint8)) for _ in range(n)]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller inputs")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    n_images = 32 if args.quick else 128
    n_texts = 512 if args.quick else 4096
    torch.manual_seed(0)
    rows: list[tuple[str, str]] = []
    corpus = captions(2000)

    for name, config in (
        ("tiny cnn + gru", ModelConfig(image_tower="cnn", text_tower="gru", **TINY)),
        ("tiny vit + transformer", ModelConfig(image_tower="vit", text_tower="transformer", **TINY)),
        (f"default {ModelConfig().image_tower} + {ModelConfig().text_tower}", ModelConfig()),
    ):
        build = median_seconds(lambda c=config: build_model(c, corpus, device="cpu"), repeats)
        model = build_model(config, corpus, device="cpu")
        size = config.image_size
        pixels, tokens = torch.randn(8, 3, size, size), model.tokenize(corpus[:8])

        def step(m: TwinEncoder = model, x: torch.Tensor = pixels, t: dict = tokens) -> None:
            (m.image_features(x) * m.text_features(t)).sum().backward()

        forward = median_seconds(step, repeats)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            (
                f"{name}: build / forward+backward batch 8",
                f"{build * 1e3:.1f} ms / {forward * 1e3:.1f} ms ({params / 1e6:.2f} M parameters)",
            )
        )

    model = build_model(ModelConfig(), corpus, device="cpu").eval()
    images = pictures(n_images)
    seconds = median_seconds(lambda: model.encode_images(images, batch_size=64), max(1, repeats // 2))
    rows.append(
        (f"default model: encode_images ({n_images} PIL 256x288)", f"{n_images / seconds:.0f} images/s")
    )
    texts = captions(n_texts, seed=1)
    seconds = median_seconds(lambda: model.encode_texts(texts, batch_size=256), max(1, repeats // 2))
    rows.append((f"default model: encode_texts ({n_texts} captions)", f"{n_texts / seconds:.0f} texts/s"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        save = median_seconds(lambda: model.save(folder), repeats)
        load = median_seconds(lambda: TwinEncoder.load(folder, device="cpu"), repeats)
        fingerprint = median_seconds(model.fingerprint, repeats)
        rows.append(
            (
                "default model: save / load / fingerprint",
                f"{save * 1e3:.0f} ms / {load * 1e3:.0f} ms / {fingerprint * 1e3:.0f} ms",
            )
        )

        n_rows = 20_000 if args.quick else 200_000
        manifest = Path(tmp) / "m.jsonl"
        lines = (json.dumps({"image": f"img/{i}.jpg", "caption": c}) for i, c in enumerate(captions(n_rows)))
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        seconds = median_seconds(lambda: read_pairs(manifest), max(1, repeats // 2))
        rows.append((f"read_pairs JSONL ({n_rows} rows)", f"{n_rows / seconds:,.0f} rows/s"))

        jpeg = Path(tmp) / "x.jpg"
        pictures(1, side=480)[0].save(jpeg, quality=90)
        transform = ImageTransform(128, (0.5,) * 3, (0.5,) * 3)
        decode = median_seconds(lambda: [transform(load_image(jpeg)) for _ in range(20)], repeats) / 20
        rows.append(
            ("load_image + eval transform (480x512 JPEG -> 128x128)", f"{1 / decode:.0f} images/s per worker")
        )

    header = (
        f"Model-side costs ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{', quick' if args.quick else ''}, "
        f"load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores)"
    )
    table = [f"# {header}", "", "| measurement | result |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]
    text = "\n".join(table) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
