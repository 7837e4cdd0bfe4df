"""Adapting the pretrained image tower: every variant tried, heads first, then partial adaptation.

On the two image-caption sets built offline (OpenMoji emoji, what ``make demo`` trains on, and the
Material Design Icons; split by variant family, so test items are unseen), each setting trains with
``retrieval.train.train`` (validating on the set's val split) and every phase it ran is scored on
val and on the test split:

* ``heads``: the model of the heads phase (the locked towers, the projection heads trained);
* ``adapt``: the model of the adaptation phase (the image tower's last units unfrozen on its cached
  locked prefix), when it ran, whether validation kept it or not;
* the ``chosen`` column says which of them the run returned (``best/``).

Test recall is given plain and with hubness correction (the inverted softmax over a query bank of
the training split's captions and images, as the demo ranks; ``hub`` columns). A setting is
``default`` (``TrainConfig()`` as it is) or ``default[name=value;...]`` with ``TrainConfig`` fields
changed (``model.image_tower=efficientnet-lite1``); a set name ``openmoji@224`` renders the set at
224 px instead of its default (OpenMoji 72 px, icons 48 px).

Recall depends only on the steps taken (seeded, deterministic on CPU), so it is reproducible on a
busy machine; seconds are not: the 1-minute load average is printed beside them (run it alone for
timings). Finished rows are cached in the work folder, so an interrupted run continues.

    python benchmarks/bench_adaptation.py [--sets openmoji,icons] [--settings default,...] [--seeds 0,1]
    python benchmarks/bench_adaptation.py --sets openmoji@224 --settings "default[adapt_image_layers=2]"
    python benchmarks/bench_adaptation.py --limit 300 --seeds 0 --work /tmp/b --out /tmp/b.md   # smoke run
    python benchmarks/bench_adaptation.py --report-only --all-settings --out results/adaptation_levers.md

Prints a table and writes ``benchmarks/results/adaptation.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval import encoding
from retrieval.cli.train import apply_overrides
from retrieval.config import TrainConfig
from retrieval.data import read_pairs
from retrieval.datasets import build_icons, build_openmoji
from retrieval.evaluate import (
    ranking_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rankings_from_embeddings,
)
from retrieval.model import TwinEncoder
from retrieval.paths import cache_dir
from retrieval.search.hubness import Hubness, item_penalties
from retrieval.train import train
from retrieval.train.adaptation import ADAPT_DIR, HEADS_BEST, RECORD_FILE
from retrieval.train.prefix import PrefixImageFeatures, tower_split

BUILDERS = {"openmoji": build_openmoji, "icons": build_icons}
KEYS = ("t2i/R@1", "t2i/R@10", "i2t/R@10")
RESULTS = Path(__file__).resolve().parent / "results" / "adaptation.md"


def build_set(name: str, limit: int | None) -> Any:
    base, _, px = name.partition("@")
    if base not in BUILDERS:
        raise SystemExit(f"unknown set {name!r}; choose from {list(BUILDERS)} (optionally @<pixels>)")
    kwargs: dict[str, Any] = {"limit": limit, "progress": False}
    if px:
        kwargs["size"] = int(px)
    return BUILDERS[base](**kwargs)


def setting_config(setting: str, data: Any, out_dir: Path, seed: int) -> TrainConfig:
    config = TrainConfig(
        train_data=str(data.train),
        val_data=str(data.val),
        out_dir=str(out_dir),
        seed=seed,
        progress=False,
        checkpoint_every=0,
    )
    if setting == "default":
        return config
    if setting.startswith("default[") and setting.endswith("]"):
        overrides = [o for o in setting[len("default[") : -1].split(";") if o]
        return TrainConfig.from_dict(apply_overrides(config.to_dict(), overrides))
    raise SystemExit(f"unknown setting {setting!r}: use default or default[name=value;...]")


def vectors(model: Any, pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image vectors [I, D], caption vectors [T, D])`` of a split, the adapted tower's images through
    its cached locked prefix (the same vectors as ``encode_images``, tested), locked towers' through
    the feature cache."""
    images, captions = pairs.images(), pairs.captions()
    split = tower_split(model)
    if split is not None:
        cache = PrefixImageFeatures(
            model,
            images,
            split,
            torch.device("cpu"),
            256,
            feature_cache=encoding.FeatureCache(),
            runtime="auto",
        )
        with encoding.inference(model, "cpu"), torch.no_grad():
            image_emb = torch.cat([cache(model, images[i : i + 512]) for i in range(0, len(images), 512)])
    else:
        image_emb = encoding.encode_images(model, images, feature_cache=True, runtime="auto").vectors
    text_emb = encoding.encode_texts(model, captions, runtime="auto").vectors
    return image_emb.float(), text_emb.float()


def metrics(model: Any, data: Any) -> dict[str, float]:
    """Val mean recall, test recall plain and with hubness correction (bank: the train split)."""
    out: dict[str, float] = {}
    bank_images, bank_texts = vectors(model, read_pairs(str(data.train)))
    for split in ("val", "test"):
        pairs = read_pairs(str(data.manifests[split]))
        image_emb, text_emb = vectors(model, pairs)
        g = pairs.text_to_image()
        plain = retrieval_metrics_from_embeddings(text_emb, image_emb, g, ks=(1, 5, 10))
        recalls = [plain[f"{d}/R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
        out[f"{split}/mean_recall"] = float(np.mean(recalls))
        if split == "test":
            out.update({f"test/{k}": float(plain[k]) for k in KEYS})
            hub = Hubness("isoftmax")
            p_img = torch.from_numpy(item_penalties(bank_texts.numpy(), image_emb.numpy(), hub))  # [I]
            p_txt = torch.from_numpy(item_penalties(bank_images.numpy(), text_emb.numpy(), hub))  # [T]
            ones_t, ones_i = torch.ones(len(text_emb), 1), torch.ones(len(image_emb), 1)
            t2i, _ = retrieval_rankings_from_embeddings(
                torch.cat([text_emb, ones_t], 1), torch.cat([image_emb, -p_img[:, None]], 1), g
            )
            _, i2t = retrieval_rankings_from_embeddings(
                torch.cat([text_emb, -p_txt[:, None]], 1), torch.cat([image_emb, ones_i], 1), g
            )
            hubbed = {**ranking_metrics(t2i, (1, 10), "t2i/"), **ranking_metrics(i2t, (1, 10), "i2t/")}
            out.update({f"hub/{k}": float(hubbed[k]) for k in KEYS})
    return out


def heads_key(config: TrainConfig) -> str:
    """What the heads phase depends on: the config without the adaptation settings and the folder."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("adapt_") and k != "out_dir"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def keep_heads(out: Path, store: Path) -> None:
    """Store the finished heads phase of ``out`` (its best model as it was before adaptation)."""
    if store.exists():
        return
    tmp = store.with_name(store.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out, tmp, ignore=shutil.ignore_patterns(ADAPT_DIR, HEADS_BEST))
    if (out / HEADS_BEST).is_dir():
        shutil.rmtree(tmp / "best")
        shutil.copytree(out / HEADS_BEST, tmp / "best")
    record = json.loads((tmp / RECORD_FILE).read_text())
    (tmp / RECORD_FILE).write_text(json.dumps({"heads": record["heads"]}))
    (tmp / ADAPT_DIR).mkdir()
    tmp.rename(store)


def run_setting(
    name: str, data: Any, setting: str, seed: int, work: Path, reuse: bool
) -> list[dict[str, Any]]:
    out = work / f"{name}-{setting}-seed{seed}".replace("/", "_")
    if out.exists():  # a run interrupted before its rows were written starts over
        shutil.rmtree(out)
    config = setting_config(setting, data, out, seed)
    store = work / "heads" / f"{name}-seed{seed}-{heads_key(config)}"
    reused = reuse and store.is_dir() and config.adapt_image_layers > 0
    if reused:  # the same heads phase ran before: adapt its result (train resumes after the heads)
        shutil.copytree(store, out)
    load0 = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(config, resume=reused)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if result.status != "interrupted" and (out / RECORD_FILE).is_file() and result.best_metric is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        keep_heads(out, store)
    load = (load0 + os.getloadavg()[0]) / 2
    if result.status == "interrupted":
        raise SystemExit(f"interrupted during {name} {setting}; finished rows are kept in {work}")
    rows = []
    for phase in result.phases:
        if phase["phase"] == "heads":
            folder = out / (HEADS_BEST if (out / HEADS_BEST).is_dir() else "best")
        else:
            folder = out / "adapt" / "best"
        model = TwinEncoder.load(folder, device="cpu")
        rows.append(
            {
                "set": name,
                "setting": setting,
                "seed": seed,
                "phase": phase["phase"],
                "kept": bool(phase.get("kept")),
                "epochs": phase["epochs"],
                "phase_seconds": phase["seconds"] + phase.get("prefix_seconds", 0.0),
                "train_cpu_s": cpu,
                "train_wall_s": wall,
                "heads_reused": reused,
                "load_1min": load,
                "decision": result.adaptation,
                **metrics(model, data),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Adapting the pretrained image tower: heads first, then the last units unfrozen",
        "",
        f"Machine: {info['cpus']} CPUs ({info['machine']}), torch {info['torch']}. Recall depends only on the "
        "steps (seeded); seconds are the training call's (CPU: `time.process_time`, all threads; wall), with "
        f"the 1-minute load average beside them. {info['note']} Data: {info['counts']}. Val = mean of the six "
        "R@K on the val split; test = the test split (families unseen in training), plain and with hubness "
        "correction (`hub`: inverted softmax, bank = the train split). `chosen` marks the phase whose model "
        "the run returned; `phase s` is each phase's own training time (the adaptation's with its prefix "
        "encoding). `*`: the heads phase was reused from a setting that differs only in adapt_* fields, "
        "so the train seconds of that row leave it out.",
        "",
        "| set | setting | seed | phase | chosen | epochs | phase s | train CPU s | train wall s | load | val | "
        "test t2i R@1 | test t2i R@10 | test i2t R@10 | hub t2i R@1 | hub t2i R@10 | hub i2t R@10 |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['setting']} | {r['seed']} | {r['phase']} | {'yes' if r['kept'] else ''} | "
            f"{r['epochs']} | {r['phase_seconds']:.0f} | {r['train_cpu_s']:.0f}{'*' if r.get('heads_reused') else ''} | "
            f"{r['train_wall_s']:.0f}{'*' if r.get('heads_reused') else ''} | "
            f"{r['load_1min']:.1f} | {r['val/mean_recall']:.3f} | "
            + " | ".join(f"{r[f'test/{k}']:.3f}" for k in KEYS)
            + " | "
            + " | ".join(f"{r[f'hub/{k}']:.3f}" for k in KEYS)
            + " |"
        )
    means = mean_rows(rows)
    if means:
        lines += ["", "Means over the seeds each (set, setting, phase) ran:", "", *lines[4:6]]
        for r in means:
            lines.append(
                f"| {r['set']} | {r['setting']} | {r['seed']} | {r['phase']} | {r['kept']} | {r['epochs']:.1f} | "
                f"{r['phase_seconds']:.0f} | {r['train_cpu_s']:.0f} | {r['train_wall_s']:.0f} | {r['load_1min']:.1f} | "
                f"{r['val/mean_recall']:.3f} | "
                + " | ".join(f"{r[f'test/{k}']:.3f}" for k in KEYS)
                + " | "
                + " | ".join(f"{r[f'hub/{k}']:.3f}" for k in KEYS)
                + " |"
            )
    lines += ["", "Decisions:", ""]
    for r in rows:
        if r["phase"] == "heads":
            lines.append(f"- {r['set']}, {r['setting']}, seed {r['seed']}: {r['decision']}")
    return "\n".join(lines) + "\n"


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["setting"], r["phase"]), []).append(r)
    out = []
    numeric = ("epochs", "phase_seconds", "train_cpu_s", "train_wall_s", "load_1min", "val/mean_recall")
    for (name, setting, phase), group in groups.items():
        if len(group) < 2:
            continue
        mean = {k: float(np.mean([r[k] for r in group])) for k in numeric}
        mean.update(
            {
                f"{p}/{k}": float(np.mean([r[f"{p}/{k}"] for r in group]))
                for p in ("test", "hub")
                for k in KEYS
            }
        )
        seeds = ",".join(str(r["seed"]) for r in group)
        kept = f"{sum(r['kept'] for r in group)}/{len(group)}"
        out.append(
            {"set": name, "setting": setting, "phase": phase, "seed": f"mean {seeds}", "kept": kept, **mean}
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sets", default="openmoji,icons", help="comma-separated: openmoji, icons (optionally @px)"
    )
    parser.add_argument("--settings", default="default", help="comma-separated: default, default[k=v;...]")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--limit", type=int, default=None, help="only N items per set (a smoke run)")
    parser.add_argument("--work", default=None, help="work folder (default: the toolkit cache)")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    parser.add_argument("--note", default="", help="a sentence about the machine's state for the table")
    parser.add_argument("--report-only", action="store_true", help="train nothing: write the table of --work")
    parser.add_argument(
        "--all-settings", action="store_true", help="the table shows every setting of --work, not only --settings"
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="train the heads phase for every setting (by default settings that differ only in adapt_* "
        "fields adapt the same finished heads; their train seconds then leave the heads out)",
    )
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else cache_dir("bench-adaptation")
    work.mkdir(parents=True, exist_ok=True)
    rows_file = work / "rows.jsonl"
    done = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    sets = [s for s in args.sets.split(",") if s]
    settings = [s for s in _split_settings(args.settings)]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    counts = {}
    for name in sets:
        data = build_set(name, args.limit)
        counts[name] = {split: data.counts[split]["images"] for split in ("train", "val", "test")}
        if args.report_only:
            continue
        for setting in settings:
            for seed in seeds:
                if any(r["set"] == name and r["setting"] == setting and r["seed"] == seed for r in done):
                    continue
                print(f"{name} {setting} seed {seed} (load {os.getloadavg()[0]:.1f})", flush=True)
                new = run_setting(name, data, setting, seed, work, not args.no_reuse)
                with open(rows_file, "a", encoding="utf-8") as fh:
                    for row in new:
                        fh.write(json.dumps(row) + "\n")
                done.extend(new)
                for row in new:
                    print(
                        f"  {row['phase']:5s} {'kept' if row['kept'] else '    '} val {row['val/mean_recall']:.3f} test "
                        + " ".join(f"{k} {row[f'test/{k}']:.3f}" for k in KEYS)
                        + " | hub "
                        + " ".join(f"{row[f'hub/{k}']:.3f}" for k in KEYS)
                        + f" | {row['train_wall_s']:.0f}s wall, load {row['load_1min']:.1f}",
                        flush=True,
                    )
    rows = [r for r in done if r["set"] in sets and (args.all_settings or r["setting"] in settings)]
    rows.sort(
        key=lambda r: (
            sets.index(r["set"]),
            r["setting"] != "default",
            r["setting"],
            r["seed"],
            r["phase"] != "heads",
        )
    )
    info = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "note": args.note,
        "counts": counts,
    }
    text = markdown(rows, info)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


def _split_settings(text: str) -> list[str]:
    """Split at commas outside brackets (``default[a=1;b=2],default``)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p]


if __name__ == "__main__":
    raise SystemExit(main())
