"""Encoding speed by runtime: images/s and texts/s of ``encode_images`` / ``encode_texts`` on torch and
on ONNX Runtime, against the bare towers, in one run; the vectors of both runtimes compared.

The model is the demo's (the default recipe: EfficientNet-Lite0 at 224 px + all-MiniLM-L6-v2, both
from PyPI; the heads are random, which changes nothing to speed). Images are PNGs drawn at 72 px
(what the demo renders; ``--images DIR`` reads a folder of your own instead), captions have about 9
tokens. Rows:

* images: the bare tower on pre-decoded pixels (torch eager, and its ONNX graph in an ONNX Runtime
  session); ``encode_images`` (decode + resize + tower + head) with ``runtime="torch"``, ``"onnx"``,
  ``"auto"``, and with the feature cache warm (every feature read, only the head runs); decoding
  alone (one thread, and the pool ``encode_images`` uses), to tell whether decoding overlaps the
  forward pass on this machine's cores.
* texts: the bare tower on pre-tokenized captions (torch, the plain ONNX graph, the graph after
  ONNX Runtime's transformer optimizer, which the toolkit does not use by default:
  ``retrieval.export.onnx.TRANSFORMER_OPTIMIZER``); ``encode_texts`` with each runtime.
* export: the one-off cost of exporting and checking each tower (in a fresh cache folder).

Every timing is the median of ``--repeats`` runs after one warm-up. Prints a table and writes
``benchmarks/results/encode.md``. Run it alone on the machine:

    python benchmarks/bench_encode.py [--images-n 512] [--texts-n 2048] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "encode.md"
COLORS = ((220, 30, 30), (30, 180, 60), (40, 60, 220), (230, 210, 40), (140, 60, 200))
WORDS = ("red", "green", "blue", "yellow", "purple", "circle", "square", "smiling", "face", "cat")


def make_images(root: Path, n: int, side: int = 72) -> list[str]:
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        pad = 6 + (i * 5) % 18
        color = COLORS[i % len(COLORS)]
        if i % 3 == 0:
            draw.ellipse((pad, pad, side - pad, side - pad), fill=color)
        elif i % 3 == 1:
            draw.rectangle((pad, pad, side - pad, side - pad), fill=color)
        else:
            draw.polygon([(side // 2, pad), (pad, side - pad), (side - pad, side - pad)], fill=color)
        draw.ellipse((side // 3, side // 3, side // 3 + 8, side // 3 + 8), fill=COLORS[(i + 2) % 5])
        path = root / f"{i:05d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def make_captions(n: int) -> list[str]:
    return [
        f"a {WORDS[i % 5]} {WORDS[5 + i % 5]} with a {WORDS[(i // 5) % 5]} dot number {i % 13}"
        for i in range(n)
    ]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images-n", type=int, default=512, help="images encoded per timing")
    parser.add_argument("--texts-n", type=int, default=2048, help="captions encoded per timing")
    parser.add_argument("--batch", type=int, default=64, help="images / captions per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--images", default=None, metavar="DIR", help="encode these images instead")
    parser.add_argument("--out", default=str(RESULTS), help="results file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    os.environ["RETRIEVAL_CACHE"] = str(work / "cache")  # a fresh cache: exports and features measured
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from retrieval import encoding
    from retrieval.config import RECIPE_MODEL
    from retrieval.encoding import towers
    from retrieval.encoding.images import _prepared_batches, decode_threads
    from retrieval.export.onnx import cpu_session, export_tower
    from retrieval.model import build_model

    if args.images:
        exts = (".png", ".jpg", ".jpeg", ".webp")
        paths = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in exts)[
            : args.images_n
        ]
    else:
        paths = make_images(work / "images", args.images_n)
    captions = make_captions(args.texts_n)
    model = build_model(RECIPE_MODEL, device="cpu").eval()
    cpu = torch.device("cpu")
    n_img, n_txt, b = len(paths), len(captions), args.batch
    rows: list[tuple[str, str, str]] = []

    # ---------------------------------------------------------------- export (one-off)
    t0 = time.perf_counter()
    image_runner = towers.tower_runner(model, "image", "onnx", cpu)
    export_image = time.perf_counter() - t0
    t0 = time.perf_counter()
    text_runner = towers.tower_runner(model, "text", "onnx", cpu)
    export_text = time.perf_counter() - t0
    assert image_runner is not None and text_runner is not None, "a tower of the recipe did not export"

    # ---------------------------------------------------------------- images
    transform = model.image_transform()
    from PIL import Image

    from retrieval.data.images import load_image

    pixels = torch.stack([transform(load_image(p)) for p in paths])  # [n, 3, 224, 224]
    tower = model.image_tower

    def bare_torch_image() -> None:
        with torch.inference_mode():
            for s in range(0, n_img, b):
                tower(pixels[s : s + b])

    session = image_runner.session
    arrays = [np.ascontiguousarray(pixels[s : s + b].numpy()) for s in range(0, n_img, b)]

    def bare_onnx_image() -> None:
        for a in arrays:
            session.run(["features"], {"pixel_values": a})

    def decode(threads: int) -> Callable[[], None]:
        def run() -> None:
            import retrieval.encoding.images as images_module

            saved = images_module.decode_threads
            images_module.decode_threads = lambda: threads  # type: ignore[assignment]
            try:
                for _ in _prepared_batches(
                    paths, transform, b, num_workers=0, skip_broken=False, pin_memory=False, lookup=None
                ):
                    pass
            finally:
                images_module.decode_threads = saved  # type: ignore[assignment]

        return run

    def encode(runtime: str, cache: object = None) -> Callable[[], None]:
        return lambda: encoding.encode_images(
            model, paths, batch_size=b, runtime=runtime, feature_cache=cache
        )

    threads = decode_threads()
    pool_row = f"decode + resize only, the encoders' pool ({threads} thread{'s' if threads > 1 else ''})"
    warm = encoding.FeatureCache(work / "features")
    encoding.encode_images(model, paths, batch_size=b, runtime="onnx", feature_cache=warm)  # fill it
    image_times = {
        "bare tower, torch eager (pre-decoded pixels)": timed(bare_torch_image, args.repeats),
        "bare tower, ONNX Runtime (pre-decoded pixels)": timed(bare_onnx_image, args.repeats),
        "decode + resize only, 1 thread": timed(decode(1), args.repeats),
        pool_row: timed(decode(decode_threads()), args.repeats),
        'encode_images, runtime="torch"': timed(encode("torch"), args.repeats),
        'encode_images, runtime="onnx"': timed(encode("onnx"), args.repeats),
        'encode_images, runtime="auto"': timed(encode("auto"), args.repeats),
        "encode_images, feature cache warm (head only)": timed(encode("onnx", warm), args.repeats),
    }
    eager = image_times["bare tower, torch eager (pre-decoded pixels)"]
    for name, seconds in image_times.items():
        rows.append(("images", name, f"{n_img / seconds:.1f} images/s ({eager / seconds:.2f}x eager)"))
    v_torch = encoding.encode_images(model, paths, batch_size=b, runtime="torch").vectors
    v_onnx = encoding.encode_images(model, paths, batch_size=b, runtime="onnx").vectors
    image_diff = float((v_torch - v_onnx).abs().max())
    image_cos = float((v_torch * v_onnx).sum(-1).min())
    decode_s = image_times[pool_row]
    forward_s = image_times["bare tower, ONNX Runtime (pre-decoded pixels)"]
    pipeline_s = image_times['encode_images, runtime="onnx"']
    overlap = (decode_s + forward_s - pipeline_s) / max(min(decode_s, forward_s), 1e-9)

    # ---------------------------------------------------------------- texts
    text_tower = model.text_tower
    tokens = [model.tokenize(captions[s : s + b]) for s in range(0, n_txt, b)]

    def bare_torch_text() -> None:
        with torch.inference_mode():
            for t in tokens:
                text_tower(t["input_ids"], t["attention_mask"])

    graph = text_runner.graph
    plain = cpu_session(graph.folder / "tower.onnx", threads=torch.get_num_threads())
    # the same tower through ONNX Runtime's transformer optimizer (fused attention, layer norm, GELU)
    t0 = time.perf_counter()
    fused = export_tower(text_tower, "text", work / "optimized", graph.fingerprint, optimize=True)
    export_fused = time.perf_counter() - t0
    optimized = cpu_session(fused.path, threads=torch.get_num_threads()) if fused.optimized else None
    feeds = [
        {"input_ids": t["input_ids"].numpy(), "attention_mask": t["attention_mask"].numpy()} for t in tokens
    ]

    def bare_session(sess: object) -> Callable[[], None]:
        names = {i.name for i in sess.get_inputs()}  # type: ignore[attr-defined]
        return lambda: [sess.run(["features"], {k: v for k, v in f.items() if k in names}) for f in feeds]  # type: ignore[attr-defined]

    def encode_text(runtime: str) -> Callable[[], None]:
        return lambda: encoding.encode_texts(model, captions, batch_size=b, runtime=runtime)

    text_times = {
        "bare tower, torch eager (pre-tokenized)": timed(bare_torch_text, args.repeats),
        "bare tower, ONNX Runtime, plain graph": timed(bare_session(plain), args.repeats),
    }
    if optimized is not None:
        text_times["bare tower, ONNX Runtime, transformer-optimized graph"] = timed(
            bare_session(optimized), args.repeats
        )
    text_times['encode_texts, runtime="torch"'] = timed(encode_text("torch"), args.repeats)
    text_times['encode_texts, runtime="onnx"'] = timed(encode_text("onnx"), args.repeats)
    text_times['encode_texts, runtime="auto"'] = timed(encode_text("auto"), args.repeats)
    eager_t = text_times["bare tower, torch eager (pre-tokenized)"]
    for name, seconds in text_times.items():
        rows.append(("texts", name, f"{n_txt / seconds:.0f} texts/s ({eager_t / seconds:.2f}x eager)"))
    t_torch = encoding.encode_texts(model, captions, batch_size=b, runtime="torch").vectors
    t_onnx = encoding.encode_texts(model, captions, batch_size=b, runtime="onnx").vectors
    text_diff = float((t_torch - t_onnx).abs().max())
    text_cos = float((t_torch * t_onnx).sum(-1).min())

    # ---------------------------------------------------------------- report
    image_gain = eager / image_times['encode_images, runtime="onnx"']
    text_gain = text_times['encode_texts, runtime="torch"'] / text_times['encode_texts, runtime="onnx"']
    lengths = [int(t["attention_mask"].sum(1).float().mean()) for t in tokens[:1]]
    lines = [
        "# Encoding speed by runtime",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{__import__('onnxruntime').__version__}. Model: the default recipe (EfficientNet-Lite0 at "
        f"{pixels.shape[-1]} px + all-MiniLM-L6-v2). {n_img} images "
        f"({'from ' + args.images if args.images else '72 px PNGs'}), {n_txt} captions of ~{lengths[0]} "
        f"tokens, batch {b}, median of {args.repeats} runs.",
        "",
        "| what | path | throughput |",
        "|---|---|---|",
        *[f"| {kind} | {name} | {value} |" for kind, name, value in rows],
        "",
        f"- Vectors, ONNX Runtime vs torch: images max |diff| {image_diff:.2e} (min cosine {image_cos:.6f}), "
        f"texts max |diff| {text_diff:.2e} (min cosine {text_cos:.6f}); the export check's tolerance is "
        "|onnx - torch| <= 1e-4 + 1e-3 |torch| on the tower features.",
        f"- Export and check, once per tower (then found by its fingerprint): image {export_image:.1f} s, "
        f"text {export_text:.1f} s (with ONNX Runtime's transformer optimizer, not used by default: "
        f"{export_fused:.1f} s{'' if fused.optimized else ', the optimizer did not recognise the model'}).",
        f"- Decoding overlaps the forward pass by {overlap:.0%} of the shorter of the two (decode pool "
        f"{decode_s:.2f} s + ONNX forward {forward_s:.2f} s vs the pipeline {pipeline_s:.2f} s; 100 %: "
        "fully hidden, 0 %: serial).",
        f"- Targets: image encoding >= 3x torch eager: {image_gain:.2f}x; text encoding not slower than "
        f"torch: {text_gain:.2f}x.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    del Image
    sys.stdout.flush()


if __name__ == "__main__":
    main()
