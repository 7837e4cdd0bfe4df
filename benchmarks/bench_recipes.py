"""Which training recipe should be the default? Recipes side by side at equal CPU time.

On the OpenMoji dataset (``retrieval.datasets.build_openmoji``: train on the train split,
validate each epoch on val, report val and the unseen test split), every recipe gets the same
budget of *process CPU seconds* (all threads; wall time on a shared machine is too noisy):
a short probe measures the CPU cost of one optimizer step, the run then gets
``max_steps = budget / cost`` so its cosine schedule completes, and the best epoch by
validation is evaluated. Recipes differ in the text tower and the loss; the image tower
(a small residual CNN) and the batch are the same for all:

* ``scratch``: CNN + bidirectional GRU with a tokenizer trained on the captions, both from scratch;
* ``lit``: CNN from scratch + all-MiniLM-L6-v2 locked (LiT, Zhai et al. 2022);
* ``lit-unfreeze2``: the same with MiniLM's last two layers trained too;

each with the ``clip`` (InfoNCE) and ``siglip`` (sigmoid) losses.

Prints a table and writes ``benchmarks/results/recipes.md``.

    python benchmarks/bench_recipes.py [--budget 150] [--recipes lit/clip,scratch/clip] [--data DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from retrieval.config import ModelConfig, TrainConfig
from retrieval.data import read_pairs
from retrieval.datasets import build_openmoji
from retrieval.evaluate import evaluate_model
from retrieval.model import TwinEncoder
from retrieval.train import train

IMAGE = {"image_tower": "cnn", "image_size": 48, "image_width": 32, "image_layers": 3, "embed_dim": 256}
TEXT = {
    "scratch": {"text_tower": "gru", "text_width": 256, "text_layers": 1},
    "lit": {"text_tower": "minilm", "lock_text": True},
    "lit-unfreeze2": {"text_tower": "minilm", "lock_text": True, "unfreeze_text_layers": 2},
}
LOSS = {
    "clip": {},
    "siglip": {"use_bias": True, "init_logit_scale": math.log(10.0), "init_logit_bias": -10.0},
}
TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 20, "epochs": 1000, "checkpoint_every": 0}
RECIPES = [f"{t}/{loss}" for t in TEXT for loss in LOSS]
KEYS = ("t2i/R@1", "t2i/R@5", "t2i/R@10", "i2t/R@1", "i2t/R@5", "i2t/R@10")


def _parse(name: str) -> tuple[str, dict[str, Any]]:
    """``"lit/clip@64x48"`` -> ``("lit/clip", image settings with a 64px input and width 48)``."""
    base, _, image = name.partition("@")
    settings = dict(IMAGE)
    if image:
        size, width = image.split("x")
        settings.update(image_size=int(size), image_width=int(width))
    return base, settings


def recipe_config(name: str, data: Any, out_dir: Path, max_steps: int) -> TrainConfig:
    base, image = _parse(name)
    text, loss = base.split("/")
    model = ModelConfig(**image, **TEXT[text], **LOSS[loss])
    return TrainConfig(
        train_data=str(data.train),
        val_data=str(data.val),
        out_dir=str(out_dir),
        model=model,
        loss=loss,
        max_steps=max_steps,
        early_stopping_patience=None,
        progress=False,
        **TRAIN,
    )


def cpu_seconds_per_step(name: str, data: Any, probe_steps: int) -> float:
    """Median process-CPU seconds of the optimizer steps after the first (warm-up) one."""
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = recipe_config(name, data, Path(tmp) / "probe", probe_steps).replace(val_data=None)
        train(config, callback=lambda record: marks.append(time.process_time()))
    return statistics.median(b - a for a, b in itertools.pairwise(marks))


def run_recipe(name: str, data: Any, budget: float, probe_steps: int, work: Path) -> dict[str, Any]:
    per_step = cpu_seconds_per_step(name, data, probe_steps)
    steps = max(10, int(budget / per_step))
    config = recipe_config(name, data, work / name.replace("/", "-"), steps)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(config)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    model = TwinEncoder.load(result.model_dir, device="cpu")
    row: dict[str, Any] = {
        "recipe": name,
        "cpu_s_per_step": per_step,
        "steps": result.steps,
        "epochs": result.epochs_completed,
        "train_cpu_s": cpu,
        "train_wall_s": wall,
    }
    for split in ("val", "test"):
        metrics = evaluate_model(model, read_pairs(str(getattr(data, split)))).metrics
        row.update({f"{split}/{key}": metrics[key] for key in KEYS})
    return row


def markdown(rows: list[dict[str, Any]], budget: float, info: dict[str, Any]) -> str:
    lines = [
        "# Training recipes at equal CPU time (OpenMoji)",
        "",
        f"Budget: {budget:.0f} process-CPU seconds of optimizer steps per recipe, "
        f"torch threads: {info['threads']}, CPUs: {info['cpus']} ({info['machine']}), torch {info['torch']}. "
        f"Data: {info['counts']}. Image tower: cnn {IMAGE['image_size']}px, width "
        f"{IMAGE['image_width']}, {IMAGE['image_layers']} stages (`@<px>x<width>` marks another size); batch {TRAIN['batch_size']}, AdamW lr {TRAIN['lr']}, "
        "cosine schedule over the steps that fit the budget; the best epoch by validation is reported. "
        "Train CPU s is the whole run (a locked tower's one-off caption encoding and the per-epoch "
        "validation included; the budget covers the steps). "
        "Wall time is pessimistic: the machine was shared with other jobs while this ran.",
        "",
        "| recipe | steps (epochs) | CPU s/step | train CPU s | wall s | val t2i R@1/5/10 | val i2t R@1/5/10 "
        "| test t2i R@1/5/10 | test i2t R@1/5/10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def triple(row: dict[str, Any], prefix: str) -> str:
        return " / ".join(f"{row[f'{prefix}@{k}']:.3f}" for k in (1, 5, 10))

    for row in rows:
        lines.append(
            f"| {row['recipe']} | {row['steps']} ({row['epochs']}) | {row['cpu_s_per_step']:.2f} "
            f"| {row['train_cpu_s']:.0f} | {row['train_wall_s']:.0f} | {triple(row, 'val/t2i/R')} | {triple(row, 'val/i2t/R')} "
            f"| {triple(row, 'test/t2i/R')} | {triple(row, 'test/i2t/R')} |"
        )
    best = max(rows, key=lambda r: r["val/t2i/R@10"])
    lines += ["", f"Best by val t2i R@10: **{best['recipe']}**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget", type=float, default=150.0, help="process-CPU seconds of training per recipe"
    )
    parser.add_argument(
        "--recipes",
        default=",".join(RECIPES),
        help=f"comma-separated, from {RECIPES} (+ optional @<px>x<width>)",
    )
    parser.add_argument("--data", default=None, help="dataset folder (default: the toolkit cache)")
    parser.add_argument("--probe-steps", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time not inflated by waits)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "recipes.md"))
    parser.add_argument("--rows", default=None, help="also write the measured rows to this JSON file")
    parser.add_argument(
        "--from-rows", nargs="+", default=None, metavar="JSON", help="only tabulate rows measured earlier"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = sorted({n for n in names if _parse(n)[0] not in RECIPES})
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {RECIPES}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    data = build_openmoji(args.data)
    info = {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "counts": ", ".join(
            f"{s} {c['images']} emoji / {c['captions']} captions" for s, c in data.counts.items()
        ),
    }
    rows = []
    if args.from_rows:  # recipes measured in separate processes (e.g. side by side)
        for path in args.from_rows:
            rows += json.loads(Path(path).read_text(encoding="utf-8"))
        rows.sort(key=lambda r: (RECIPES.index(_parse(r["recipe"])[0]), r["recipe"]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                row = run_recipe(name, data, args.budget, args.probe_steps, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
        if args.rows:
            Path(args.rows).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    text = markdown(rows, args.budget, info)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
