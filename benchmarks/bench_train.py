"""Training throughput, peak memory, data-vs-compute split, and the trainer's overhead over a plain loop.

1. Default recipe: ``TrainConfig()`` defaults (model, batch size, optimizer, precision) trained with
   ``retrieval.train.train`` on synthetic coloured-shape PNGs; pairs/s over the steady-state steps,
   the share of step time spent waiting for data, and the peak RSS of the process (each part runs
   in its own subprocess so its peak is its own; CUDA peak allocation when on a GPU).
2. Overhead: the same tiny towers, batch, data pipeline (PairDataset + collate_pairs + tokenize),
   loss, AdamW, gradient clipping and schedule, trained (a) by ``train`` and (b) by a plain
   hand-written PyTorch loop. The ratio of median step intervals (wall time between consecutive
   optimizer steps, all loop bookkeeping included) is the trainer's overhead; both loops run in one
   process (after a warm-up run of each), alternating ``--repeats`` times, and the median is
   reported (the machine may be shared).

Prints a table and writes ``benchmarks/results/train.md``.

3. Data path where towers train: the same tiny run with 0, 1 and 2 DataLoader worker processes
   against the plain loop: pairs/s and the share of step time spent waiting for data.

    python benchmarks/bench_train.py [--steps 12] [--tiny-steps 60] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train.md"
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle", "bar")
TINY = dict(
    image_tower="cnn",
    text_tower="gru",
    embed_dim=32,
    image_size=32,
    image_width=8,
    image_layers=2,
    text_width=32,
    text_layers=1,
    vocab_size=300,
    context_length=16,
    lock_text=False,  # both towers train in both loops (no locked-tower cache in play)
)


def make_pairs(root: Path, n: int, side: int = 96) -> Path:
    """``n`` PNGs of coloured shapes with captions, and a JSONL manifest."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cname = list(COLORS)[i % 4]
        shape = SHAPES[(i // 4) % 4]
        image = Image.new("RGB", (side, side), "white")
        draw = ImageDraw.Draw(image)
        pad = 8 + (i * 7) % 20
        box = (pad, pad, side - pad, side - pad)
        rgb = tuple(max(0, c - (i % 5) * 20) for c in COLORS[cname])
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        elif shape == "triangle":
            draw.polygon([(side // 2, pad), (pad, side - pad), (side - pad, side - pad)], fill=rgb)
        else:
            draw.rectangle((pad, side // 2 - 6, side - pad, side // 2 + 6), fill=rgb)
        image.save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"a {cname} {shape} number {i % 7}"})
    manifest = root / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ parts (run in subprocesses)


def part_default(manifest: str, out: str, steps: int) -> dict:
    import torch

    from retrieval.config import TrainConfig
    from retrieval.train import train

    base_rss = _peak_rss_mb()
    stamps: list[float] = []
    config = TrainConfig(
        train_data=manifest, out_dir=out, max_steps=steps, progress=False, checkpoint_every=0
    )
    result = train(config, callback=lambda record: stamps.append(time.perf_counter()))
    records = [json.loads(x) for x in Path(result.metrics_path).read_text().splitlines()]
    steady = [r for r in records if r["kind"] == "train"][1:]  # the first step pays one-off costs
    data = sum(r["data_s"] for r in steady)
    compute = sum(r["compute_s"] for r in steady)
    pairs = sum(r["pairs"] for r in steady)
    return {
        "batch_size": config.batch_size,
        "model": f"{config.model.image_tower}+{config.model.text_tower} dim {config.model.embed_dim}, "
        f"{config.model.image_size}px",
        "locked": [side for side in ("image", "text") if getattr(config.model, f"lock_{side}")],
        "optimizer": config.optimizer,
        "loss": config.loss,
        "precision": config.precision,
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "pairs_per_s": pairs / (data + compute),
        "interval_pairs_per_s": pairs / max(stamps[-1] - stamps[0], 1e-9),
        "data_share": data / (data + compute),
        "step_s": statistics.median(b - a for a, b in itertools.pairwise(stamps)),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": base_rss,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def part_trainer(manifest: str, out: str, steps: int, batch: int, num_workers: int = 0) -> dict:
    from retrieval.config import ModelConfig, TrainConfig
    from retrieval.train import train

    stamps: list[float] = []
    config = TrainConfig(
        train_data=manifest,
        out_dir=out,
        model=ModelConfig(**TINY),
        batch_size=batch,
        max_steps=steps,
        warmup_steps=5,
        epochs=1000,
        checkpoint_every=0,
        progress=False,
        device="cpu",
        num_workers=num_workers,
    )
    start = time.perf_counter()
    result = train(config, callback=lambda record: stamps.append(time.perf_counter()))
    records = [json.loads(x) for x in Path(result.metrics_path).read_text().splitlines()]
    steady = [r for r in records if r["kind"] == "train"][1:]
    data = sum(r["data_s"] for r in steady)
    compute = sum(r["compute_s"] for r in steady)
    return {
        "intervals": [b - a for a, b in itertools.pairwise(stamps)],
        "wall": time.perf_counter() - start,
        "data_share": data / max(data + compute, 1e-9),
    }


def part_workers(manifest: str, out: str, steps: int, batch: int, repeats: int) -> dict:
    """Towers that train (images decoded and augmented every step): the trainer with 0, 1 and 2
    DataLoader worker processes against the plain loop, alternating, in one process."""
    part_plain(manifest, 5, batch)
    runs: dict[str, list] = {"plain": [], "0": [], "1": [], "2": []}
    for r in range(repeats):
        runs["plain"].append(part_plain(manifest, steps, batch))
        for workers in (0, 1, 2):
            runs[str(workers)].append(part_trainer(manifest, f"{out}/w{workers}-{r}", steps, batch, workers))
    return runs


def part_plain(manifest: str, steps: int, batch: int) -> dict:
    """The same work as part_trainer written as the shortest honest PyTorch loop."""
    import math

    import torch
    from torch.utils.data import DataLoader

    from retrieval.config import ModelConfig
    from retrieval.data import PairDataset, collate_pairs, read_pairs
    from retrieval.losses import ClipLoss
    from retrieval.model import build_model

    start = time.perf_counter()
    torch.manual_seed(0)
    pairs = read_pairs(manifest)
    model = build_model(ModelConfig(**TINY), captions=pairs.captions(), device="cpu")
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = ClipLoss()
    dataset = PairDataset(pairs.pairs, model.image_transform(train=True))
    stamps: list[float] = []
    step = 0
    while step < steps:
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate_pairs)
        for b in loader:
            factor = (step + 1) / 5 if step < 5 else 0.5 * (1 + math.cos(math.pi * (step - 5) / (steps - 5)))
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * factor
            optimizer.zero_grad(set_to_none=True)
            img = model.image_features(b["pixel_values"])  # [B, D]
            txt = model.text_features(model.tokenize(b["captions"]))  # [B, D]
            loss = loss_fn(img, txt, model.logit_scale.exp(), image_ids=b["image_ids"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            float(loss.detach())  # read the loss, as any loop that logs it does
            stamps.append(time.perf_counter())
            step += 1
            if step >= steps:
                break
    return {"intervals": [b - a for a, b in itertools.pairwise(stamps)], "wall": time.perf_counter() - start}


def part_overhead(manifest: str, out: str, steps: int, batch: int, repeats: int) -> dict:
    """Both loops in one process (same imports, same warm caches), alternating; one warm-up run each."""
    part_plain(manifest, 5, batch)
    part_trainer(manifest, f"{out}/warm", 5, batch)
    runs: dict[str, list] = {"plain": [], "trainer": []}
    for r in range(repeats):
        runs["plain"].append(part_plain(manifest, steps, batch))
        runs["trainer"].append(part_trainer(manifest, f"{out}/t{r}", steps, batch))
    return runs


# ------------------------------------------------------------------ driver


def _run_part(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, __file__, "--part", *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark part {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker_rows(runs: dict, batch: int) -> list[str]:
    plain = batch / statistics.median(statistics.median(r["intervals"]) for r in runs["plain"])
    rows = [f"| plain loop | 0 | {plain:.1f} | (not measured) |"]
    for workers in ("0", "1", "2"):
        rate = batch / statistics.median(statistics.median(r["intervals"]) for r in runs[workers])
        share = statistics.median(r["data_share"] for r in runs[workers])
        rows.append(
            f"| `train()` | {workers} | {rate:.1f} ({rate / plain:.2f}x plain) | {100 * share:.0f} % |"
        )
    return rows


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the default recipe")
    parser.add_argument("--tiny-steps", type=int, default=60, help="steps per overhead run")
    parser.add_argument("--tiny-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternating trainer/plain runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        name, *rest = args.part
        import torch

        torch.set_num_threads(args.threads)
        if name == "default":
            out = part_default(rest[0], rest[1], int(rest[2]))
        elif name == "workers":
            out = part_workers(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            out = part_overhead(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        print(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        from retrieval.config import TrainConfig

        default_batch = TrainConfig().batch_size
        manifest = make_pairs(tmp_path / "data", max(default_batch * (args.steps + 1), 256))
        print(f"default recipe: {args.steps} steps ...", file=sys.stderr)
        default = _run_part(
            ["default", str(manifest), str(tmp_path / "default"), str(args.steps)], args.threads
        )
        print(f"overhead: {args.repeats} alternating runs of each loop ...", file=sys.stderr)
        runs = _run_part(
            [
                "overhead",
                str(manifest),
                str(tmp_path),
                str(args.tiny_steps),
                str(args.tiny_batch),
                str(args.repeats),
            ],
            args.threads,
        )
        trainer_runs, plain_runs = runs["trainer"], runs["plain"]
        print(f"data path: {args.repeats} alternating runs with 0, 1, 2 workers ...", file=sys.stderr)
        workers = _run_part(
            [
                "workers",
                str(manifest),
                str(tmp_path),
                str(args.tiny_steps),
                str(args.tiny_batch),
                str(args.repeats),
            ],
            args.threads,
        )

    t_step = statistics.median(statistics.median(r["intervals"]) for r in trainer_runs)
    p_step = statistics.median(statistics.median(r["intervals"]) for r in plain_runs)
    t_fast = statistics.median(_quantile(r["intervals"], 0.1) for r in trainer_runs)
    p_fast = statistics.median(_quantile(r["intervals"], 0.1) for r in plain_runs)
    t_mean = statistics.median(statistics.fmean(r["intervals"]) for r in trainer_runs)
    p_mean = statistics.median(statistics.fmean(r["intervals"]) for r in plain_runs)
    t_wall = statistics.median(r["wall"] for r in trainer_runs)
    p_wall = statistics.median(r["wall"] for r in plain_runs)
    ratio = t_step / p_step
    cuda = f"{default['cuda_peak_mb']:.0f} MB" if default["cuda_peak_mb"] is not None else "n/a (CPU)"
    lines = [
        "# Training benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs while measured), "
        f"Python {platform.python_version()}, torch threads {args.threads}, device {default['device']}.",
        "",
        "## Default recipe (`TrainConfig()` defaults)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| model | {default['model']} |",
        f"| locked towers (outputs cached once, only heads run per step) | "
        f"{', '.join(default['locked']) or 'none'} |",
        f"| batch / loss / optimizer / precision | {default['batch_size']} / {default['loss']} / "
        f"{default['optimizer']} / {default['precision']} |",
        f"| throughput (steady steps, data + compute) | {default['pairs_per_s']:.1f} pairs/s |",
        f"| throughput (wall between steps) | {default['interval_pairs_per_s']:.1f} pairs/s |",
        f"| median step | {default['step_s']:.2f} s |",
        f"| time waiting for data (decode + augment + collate, 0 workers) | {100 * default['data_share']:.0f} % |",
        f"| time in compute (features, loss, backward, optimizer step) | {100 * (1 - default['data_share']):.0f} % |",
        f"| peak RSS (process) | {default['peak_rss_mb']:.0f} MB (after imports: {default['rss_after_imports_mb']:.0f} MB) |",
        f"| peak CUDA memory | {cuda} |",
        "",
        f"## Trainer overhead vs a plain PyTorch loop (tiny towers, batch {args.tiny_batch}, "
        f"{args.tiny_steps} steps, median of {args.repeats} alternating runs in one process)",
        "",
        "| | plain loop | `train()` | ratio |",
        "|---|---|---|---|",
        f"| median step interval | {1000 * p_step:.1f} ms | {1000 * t_step:.1f} ms | **{ratio:.3f}** |",
        f"| mean step interval | {1000 * p_mean:.1f} ms | {1000 * t_mean:.1f} ms | {t_mean / p_mean:.3f} |",
        f"| 10th-percentile step interval (least disturbed by other jobs) | {1000 * p_fast:.1f} ms | "
        f"{1000 * t_fast:.1f} ms | {t_fast / p_fast:.3f} |",
        f"| whole run incl. set-up, final save | {p_wall:.1f} s | {t_wall:.1f} s | {t_wall / p_wall:.3f} |",
        "",
        f"Target: step-interval ratio <= 1.05 -> {'met' if ratio <= 1.05 else 'NOT met'}. The trainer's extra "
        "work per step: per-item seeded augmentation, per-step dropout seed, image-id hashing, one "
        "JSONL line, the callback; the whole-run ratio also counts the checkpoint and the final/ model it writes.",
        "",
        f"## Towers that train: the data path (tiny towers, 96 px PNGs decoded and augmented every step, "
        f"batch {args.tiny_batch}, {args.tiny_steps} steps, median of {args.repeats} alternating runs)",
        "",
        "| loop | DataLoader workers | pairs/s (median step interval) | time waiting for data |",
        "|---|---|---|---|",
        *_worker_rows(workers, args.tiny_batch),
        "",
        "Workers are processes: augmentation draws from torch's generator, seeded per item, so a thread "
        "sharing it with the step's dropout could not stay reproducible.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from retrieval.config import atomic_write_text

    atomic_write_text(RESULTS, text)


if __name__ == "__main__":
    main()
