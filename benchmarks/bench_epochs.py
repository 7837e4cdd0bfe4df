"""How long should ``retrieval train`` train? The default (validation decides) against fixed epochs.

On two image-caption sets built offline (OpenMoji emoji and Material Design Icons; each split
into train / val / test by variant family, so test items are unseen), every setting trains the
default recipe and is scored on the test split with the model the run returns (``best/``):

* ``default``: ``TrainConfig()`` as it is: the pretrained EfficientNet-Lite0 and MiniLM towers
  locked, their projection heads trained; constant learning rate until validation plateaus, then
  a decay, then stop (``epochs`` only a cap), validating on the set's val split (``--val``),
  batches partly grown from index-mined neighbourhoods after two epochs (hard negatives);
* ``scratch``: the same schedule with the recipe before the pretrained image tower: the small CNN
  trained from scratch on augmented 48 px images (``ModelConfig()``, lr 1e-3, weight decay 0.3);
* ``scratch-auto``: ``scratch`` without ``--val``: the trainer holds out its own validation
  images from the training split (what ``retrieval train DATA --out DIR`` does);
* ``cosine-10`` / ``-20`` / ``-40``: ``scratch`` before validation decided its length: random
  batches, warmup + cosine decay over exactly that many epochs (no early stopping), validating on
  the val split.

Quality depends only on the steps taken (seeded, deterministic on CPU), so the table is
reproducible on a busy machine; the CPU seconds (``time.process_time``, all threads of this
process) are not, and the machine load is printed with them. Finished rows are cached in the work
folder, so an interrupted run continues where it stopped.

Prints a table and writes ``benchmarks/results/epochs.md``.

    python benchmarks/bench_epochs.py [--sets openmoji,icons] [--settings default,cosine-10] [--seeds 0,1]
    python benchmarks/bench_epochs.py --limit 300 --settings default,cosine-10 --work /tmp/b --out /tmp/b.md
    python benchmarks/bench_epochs.py --settings "default,default[decay_fraction=0.4;early_stopping_patience=4]"

A setting followed by ``[name=value;...]`` is that setting with those ``TrainConfig`` fields changed
(a variant to compare against the default in the same table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from retrieval.cli.train import apply_overrides
from retrieval.config import ModelConfig, TrainConfig
from retrieval.data import read_pairs
from retrieval.datasets import build_icons, build_openmoji
from retrieval.evaluate import evaluate_model
from retrieval.model import TwinEncoder
from retrieval.paths import cache_dir
from retrieval.train import train

SETS = {"openmoji": build_openmoji, "icons": build_icons}
SETTINGS = ("default", "scratch", "scratch-auto", "cosine-10", "cosine-20", "cosine-40")
KEYS = ("t2i/R@1", "t2i/R@10", "i2t/R@10")
RESULTS = Path(__file__).resolve().parent / "results" / "epochs.md"


def setting_config(setting: str, data: Any, out_dir: Path, seed: int) -> TrainConfig:
    """The TrainConfig of one setting on one data set."""
    default = TrainConfig(
        train_data=str(data.train),
        val_data=str(data.val),
        out_dir=str(out_dir),
        seed=seed,
        progress=False,
        checkpoint_every=0,
    )
    # the recipe before the pretrained image tower: the from-scratch CNN with augmented images
    scratch = default.replace(model=ModelConfig(), lr=1e-3, weight_decay=0.3, augment=True)
    if "[" in setting and setting.endswith("]"):  # a variant: "default[decay_fraction=0.4;...]"
        name, _, overrides = setting[:-1].partition("[")
        config = setting_config(name, data, out_dir, seed)
        return TrainConfig.from_dict(apply_overrides(config.to_dict(), overrides.split(";")))
    if setting == "default":
        return default
    if setting == "scratch":
        return scratch
    if setting == "scratch-auto":
        return scratch.replace(val_data=None)
    if setting.startswith("cosine-"):
        return scratch.replace(
            schedule="cosine",
            epochs=int(setting.split("-")[1]),
            early_stopping_patience=None,
            hard_negatives=False,
        )
    raise ValueError(f"unknown setting {setting!r}; choose from {list(SETTINGS)}")


def run_setting(name: str, data: Any, setting: str, seed: int, work: Path) -> dict[str, Any]:
    out = work / f"{name}-{setting}-seed{seed}"
    if out.exists():  # a run interrupted before its row was written starts over
        import shutil

        shutil.rmtree(out)
    config = setting_config(setting, data, out, seed)
    load0 = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(config)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if result.status == "interrupted":  # Ctrl-C / SIGTERM: keep the finished rows, cache no partial one
        raise SystemExit(f"interrupted during {name} {setting}; finished rows are kept in {work}")
    model = TwinEncoder.load(result.model_dir, device="cpu")
    metrics = evaluate_model(model, read_pairs(str(data.test))).metrics
    val_epochs = [
        json.loads(line) for line in result.metrics_path.read_text().splitlines() if '"kind": "val"' in line
    ]
    best_epoch = max(val_epochs, key=lambda r: r[config.select_metric])["epoch"] if val_epochs else None
    return {
        "set": name,
        "setting": setting,
        "seed": seed,
        "status": result.status,
        "why": result.stop_reason,
        "epochs": result.epochs_completed,
        "best_epoch": best_epoch,
        "steps": result.steps,
        "train_cpu_s": cpu,
        "train_wall_s": wall,
        "load_1min": (load0 + os.getloadavg()[0]) / 2,
        "validation": result.validation.get("source"),
        **{f"test/{key}": float(metrics[key]) for key in KEYS},
    }


def order(setting: str) -> tuple[int, str]:
    """Table order: the default, its variants, then the fixed settings by length."""
    base = setting.partition("[")[0]
    return (SETTINGS.index(base) if base in SETTINGS else len(SETTINGS), setting)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per set and seed: is the validation-decided schedule within 0.01 R@10 of the best fixed length
    (both directions)? Compared on the recipe the fixed lengths ran: ``scratch`` and its variants."""
    lines = []
    groups = list(dict.fromkeys((r["set"], r["seed"]) for r in rows))
    for name, seed in groups:
        group = [r for r in rows if r["set"] == name and r["seed"] == seed]
        fixed = [r for r in group if r["setting"].startswith("cosine-") and "[" not in r["setting"]]
        for default in [r for r in group if r["setting"].startswith("scratch")]:
            if not fixed:
                continue
            parts = []
            for key in ("test/t2i/R@10", "test/i2t/R@10"):
                best = max(fixed, key=lambda r: r[key])
                gap = default[key] - best[key]
                ok = "ok" if round(gap, 6) >= -0.01 else "MISSED"
                parts.append(
                    f"{key[5:]} {default[key]:.3f} vs {best[key]:.3f} ({best['setting']}): {gap:+.3f} {ok}"
                )
            lines.append(f"- {name}, seed {seed}, {default['setting']}: " + "; ".join(parts))
    return lines


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per set and setting, means over seeds ``default`` or ``scratch`` has run: one group per seed set
    that some setting shares with one of them (at least two seeds), each with every setting that ran
    all of it."""
    means = []
    for name in dict.fromkeys(r["set"] for r in rows):
        group = [r for r in rows if r["set"] == name]
        settings = list(dict.fromkeys(r["setting"] for r in group))
        ran = {s: {r["seed"] for r in group if r["setting"] == s} for s in settings}
        shared = {
            frozenset(ran[s] & ran.get(reference, set())) for s in settings for reference in ("default", "scratch")
        }
        for seeds in sorted((x for x in shared if len(x) >= 2), key=lambda x: (-len(x), sorted(x))):
            for setting in settings:
                if not seeds <= ran[setting]:
                    continue
                picked = [r for r in group if r["setting"] == setting and r["seed"] in seeds]
                mean = {
                    key: sum(r[key] for r in picked) / len(picked)
                    for key in ("epochs", "steps", "train_cpu_s", "load_1min", *(f"test/{k}" for k in KEYS))
                }
                seed_label = "mean " + ",".join(str(s) for s in sorted(seeds))
                means.append({**picked[0], **mean, "seed": seed_label, "best_epoch": "-", "status": "-"})
    return means


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# How long to train, and what the default recipe gives: validation decides against fixed epochs",
        "",
        f"Machine: {info['cpus']} CPUs ({info['machine']}), torch {info['torch']}, {info['threads']} torch threads. "
        "Quality depends only on the steps (seeded, deterministic on CPU); CPU s is `time.process_time` of the "
        "training call (all threads, validation included). "
        f"{info['load_note']} Data: {info['counts']}. Test = the set's test split (families unseen in "
        "training); the model is the one the run returns (`best/` by validation).",
        "",
        "| set | setting | seed | epochs (best) | steps | stopped | train CPU s | load | test t2i R@1 | "
        "test t2i R@10 | test i2t R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['setting']} | {r['seed']} | {r['epochs']} ({r['best_epoch']}) | {r['steps']} | "
            f"{r['status']} | {r['train_cpu_s']:.0f} | {r['load_1min']:.1f} | {r['test/t2i/R@1']:.3f} | "
            f"{r['test/t2i/R@10']:.3f} | {r['test/i2t/R@10']:.3f} |"
        )
    means = mean_rows(rows)
    if means:
        lines += ["", "Means over seeds (each seed set with the settings that ran all of it):", ""]
        lines += lines[4:6]  # the header of the table above
        for r in means:
            lines.append(
                f"| {r['set']} | {r['setting']} | {r['seed']} | {r['epochs']:.1f} | {r['steps']:.0f} | - | "
                f"{r['train_cpu_s']:.0f} | {r['load_1min']:.1f} | {r['test/t2i/R@1']:.3f} | "
                f"{r['test/t2i/R@10']:.3f} | {r['test/i2t/R@10']:.3f} |"
            )
    noise = [
        f"{name} ({c['test']} test images): {math.sqrt(0.25 / c['test']):.3f}"
        for name, c in info["counts"].items()
        if c.get("test")
    ]
    lines += [
        "",
        "Target: the validation-decided schedule within 0.01 R@10 of the best fixed length on every set, "
        "on the recipe both ran (scratch). One standard error "
        "of a test recall near 0.5 (sqrt(p(1-p)/n), n = test images): " + "; ".join(noise) + ", so "
        "single-seed gaps of that size are noise; the mean over seeds is the fairer reading.",
        "",
    ]
    lines += verdicts(rows + means)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: openmoji, icons")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated of {list(SETTINGS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--limit", type=int, default=None, help="only N items per set (a smoke run)")
    parser.add_argument("--work", default=None, help="work folder (default: the toolkit cache)")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    parser.add_argument("--quiet-machine", action="store_true", help="say the machine was not shared")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the table of the rows already in --work",
    )
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else cache_dir("bench-epochs")
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "rows.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    rows: list[dict[str, Any]] = []
    counts = {}
    for name in args.sets.split(","):
        data = SETS[name](progress=False, limit=args.limit)
        counts[name] = {split: c["images"] for split, c in data.counts.items()}
        if args.report_only:
            rows += sorted(
                (r for r in done if r["set"] == name), key=lambda r: (r["seed"], order(r["setting"]))
            )
            continue
        for seed in (int(s) for s in args.seeds.split(",")):
            for setting in args.settings.split(","):
                row = next(
                    (r for r in done if (r["set"], r["setting"], r["seed"]) == (name, setting, seed)), None
                )
                if row is None:
                    row = run_setting(name, data, setting, seed, work)
                    with open(cache, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                rows.append(row)
                print(
                    f"{name:9s} {setting:13s} seed {seed}: {row['epochs']:3d} epochs (best {row['best_epoch']}), "
                    f"{row['train_cpu_s']:6.0f} CPU s, t2i R@1 {row['test/t2i/R@1']:.3f} R@10 "
                    f"{row['test/t2i/R@10']:.3f}, i2t R@10 {row['test/i2t/R@10']:.3f} [{row['status']}]",
                    flush=True,
                )
    info = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "counts": counts,
        "load_note": (
            "Measured on a quiet machine."
            if args.quiet_machine
            else "The machine was shared with other jobs while this ran (the load column is the 1-minute "
            "load average around each run): CPU seconds are pessimistic, recall is unaffected."
        ),
    }
    text = markdown(rows, info)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
