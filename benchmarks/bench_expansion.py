"""Query expansion through the training pairs, beside plain and hubness-corrected ranking.

For the models ``bench_adaptation.py`` trained (the default command on OpenMoji and the Material
Design icons, seeds 0 and 1; each run's returned model, ``best/``), the val and test splits are
ranked three ways, exactly over all candidates:

* ``plain``: cosine;
* ``hub``: hubness correction (inverted softmax, query bank = the train split), as the demo ranks;
* ``exp``: each query first expanded through the train split's pairs
  (:mod:`retrieval.search.expansion`, the default :class:`~retrieval.search.Expansion`), then corrected.

A grid of expansion settings is scored on the val split, and the one validation prefers is also
scored on test, so the table shows whether the default is where validation would put it. ``ms/q``
is the expansion's own time per query (the bank lookup; encoding and search are the same).

    python benchmarks/bench_expansion.py [--sets openmoji,icons] [--seeds 0,1] [--setting default]
    python benchmarks/bench_expansion.py --also "icons@224|default[model.image_regions=2]"   # more runs

Reads the run folders of ``bench_adaptation.py``'s work folder (run that first); prints a table and
writes ``benchmarks/results/expansion.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_adaptation import build_set, vectors

from retrieval.config import EvalConfig
from retrieval.data import read_pairs
from retrieval.evaluate import ranking_metrics, retrieval_rankings_from_embeddings
from retrieval.evaluate.evaluator import _bank_metrics
from retrieval.model import TwinEncoder
from retrieval.paths import cache_dir
from retrieval.search import Expansion, QueryBank, expand_queries

RESULTS = Path(__file__).resolve().parent / "results" / "expansion.md"
GRID = [Expansion(k, w, t) for k, w, t in itertools.product((5, 10, 30), (0.25, 0.5, 1.0), (0.05, 0.1))]
KEYS = ("t2i/R@1", "t2i/R@10", "i2t/R@10")


def ranked(texts: np.ndarray, images: np.ndarray, g: np.ndarray, bank: QueryBank, how: str,
           expansion: Expansion | None = None) -> dict[str, float]:  # fmt: skip
    """R@1/5/10 both ways, as ``retrieval eval`` ranks: ``how`` = plain | hub | exp (expanded, then
    hubness-corrected)."""
    t, i = torch.from_numpy(texts), torch.from_numpy(images)
    if how == "plain":
        t2i, i2t = retrieval_rankings_from_embeddings(t, i, g)
        return {**ranking_metrics(t2i, (1, 5, 10), "t2i/"), **ranking_metrics(i2t, (1, 5, 10), "i2t/", true_recall=True)}
    e = expansion or Expansion()
    config = EvalConfig(
        hubness="isoftmax", expansion_k=e.k, expansion_weight=e.weight, expansion_temperature=e.temperature
    )
    metrics = _bank_metrics(t, i, g, (1, 5, 10), config, bank, expand=how == "exp")
    return {key[len(how) + 1 :]: value for key, value in metrics.items()}


def mean_recall(m: dict[str, float]) -> float:
    return float(np.mean([m[f"{d}/R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]))


def measure(name: str, data: Any, model_dir: Path) -> dict[str, Any]:
    model = TwinEncoder.load(model_dir, device="cpu")
    train = read_pairs(str(data.train))
    bank_images, bank_texts = (x.numpy() for x in vectors(model, train))
    bank = QueryBank({"image": bank_images, "text": bank_texts}, pairs=train.text_to_image())
    splits = {}
    for split in ("val", "test"):
        pairs = read_pairs(str(data.manifests[split]))
        images, texts = (x.numpy() for x in vectors(model, pairs))
        splits[split] = (texts, images, pairs.text_to_image())
    row: dict[str, Any] = {}
    for how in ("plain", "hub", "exp"):
        row[f"val/{how}"] = mean_recall(ranked(*splits["val"], bank, how))
        row.update({f"test/{how}/{k}": v for k, v in ranked(*splits["test"], bank, how).items()})
    # the collection as the demo builds it: every split's images, the training ones included
    test_texts, test_images, test_g = splits["test"]
    val_images = splits["val"][1]
    everything = np.concatenate([bank_images, val_images, test_images])
    offset = len(bank_images) + len(val_images)
    for how in ("hub", "exp"):
        m = ranked(test_texts, everything, test_g + offset, bank, how)
        row.update({f"all/{how}/t2i/R@{k}": m[f"t2i/R@{k}"] for k in (1, 10)})
    scores = [(mean_recall(ranked(*splits["val"], bank, "exp", e)), e) for e in GRID]
    best_val, best = max(scores, key=lambda s: s[0])
    row["val/best"] = best_val
    row["best"] = f"{best.k} / {best.weight} / {best.temperature}"
    row.update({f"test/best/{k}": v for k, v in ranked(*splits["test"], bank, "exp", best).items()})
    texts, images, _ = splits["test"]
    t0 = time.perf_counter()
    for _ in range(3):
        expand_queries(texts, bank, "text", Expansion())
        expand_queries(images, bank, "image", Expansion())
    row["ms_per_query"] = (time.perf_counter() - t0) / 3 / (len(texts) + len(images)) * 1000
    row["bank"] = f"{len(bank_texts)} captions, {len(bank_images)} images"
    return row


def markdown(rows: list[dict[str, Any]], note: str, setting: str) -> str:
    out = [
        "# Query expansion through the training pairs",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}; load average "
        f"{note} (the end: its own threads). The models are the ones `bench_adaptation.py` returned for "
        f"the command of each row's setting (seeds 0 and 1); its run folders of setting `{setting}` are the "
        "default command's. Val = mean of the six R@K on the val split; test = the test split (families unseen in "
        "training): t2i R@1 / t2i R@10 / i2t R@10. `plain` = cosine; `hub` = hubness correction (inverted "
        "softmax, bank = the train split), as the demo ranks; `exp` = the default expansion (10 neighbours, "
        "weight 0.5, temperature 0.05) through the train split's pairs, then the same correction; "
        "`val-best` = the expansion setting (k / weight / temperature) of an 18-point grid that validation "
        "prefers, with its test. `ms/q` = the expansion's time per query (both directions' queries, numpy). "
        "`all images` = the test captions searching every split's images, the training images (the bank's "
        "own) included, as in the demo's collection: t2i R@1 / R@10, hub -> exp.",
        "",
        "| set | setting | seed | bank | val plain | val hub | val exp | test plain | test hub | test exp | val-best setting | val-best val | val-best test | ms/q | all images hub -> exp |",
        "|---|---|---:|---|---:|---:|---:|---|---|---|---|---:|---|---:|---|",
    ]

    def trio(r: dict[str, Any], how: str) -> str:
        return " / ".join(f"{r[f'test/{how}/{k}']:.3f}" for k in KEYS)

    for r in rows:
        out.append(
            f"| {r['set']} | {r['setting']} | {r['seed']} | {r['bank']} | {r['val/plain']:.3f} | {r['val/hub']:.3f} | "
            f"{r['val/exp']:.3f} | {trio(r, 'plain')} | {trio(r, 'hub')} | {trio(r, 'exp')} | {r['best']} | "
            f"{r['val/best']:.3f} | {trio(r, 'best')} | {r['ms_per_query']:.3f} | "
            f"{r['all/hub/t2i/R@1']:.3f} / {r['all/hub/t2i/R@10']:.3f} -> "
            f"{r['all/exp/t2i/R@1']:.3f} / {r['all/exp/t2i/R@10']:.3f} |"
        )
    out += [
        "",
        "Means over the seeds:",
        "",
        "| set | setting | val hub | val exp | test hub | test exp |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, setting in dict.fromkeys((r["set"], r["setting"]) for r in rows):
        mine = [r for r in rows if (r["set"], r["setting"]) == (name, setting)]

        def avg(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return float(np.mean([r[key] for r in mine]))

        out.append(
            f"| {name} | {setting} | {avg('val/hub'):.3f} | {avg('val/exp'):.3f} | "
            + " / ".join(f"{avg(f'test/hub/{k}'):.3f}" for k in KEYS)
            + " | "
            + " / ".join(f"{avg(f'test/exp/{k}'):.3f}" for k in KEYS)
            + " |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="openmoji,icons", help="comma-separated: openmoji, icons")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--setting", default="default", help="bench_adaptation's setting whose runs are read")
    parser.add_argument(
        "--also", action="append", default=[], metavar="SET|SETTING", help="more runs to read (repeatable)"
    )
    parser.add_argument("--work", default=None, help="bench_adaptation's work folder (default: the toolkit cache)")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else cache_dir("bench-adaptation")
    load_before = os.getloadavg()[0]
    rows = []
    runs = [(name, args.setting) for name in args.sets.split(",") if name]
    runs += [tuple(extra.split("|", 1)) for extra in args.also]
    for name, setting in runs:
        data = build_set(name, None)
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            run = work / f"{name}-{setting}-seed{seed}" / "best"
            if not run.is_dir():
                raise SystemExit(
                    f"no model at {run}: run bench_adaptation.py --sets {name} --settings '{setting}' --seeds {seed}"
                )
            row = {"set": name, "setting": setting, "seed": seed, **measure(name, data, run)}
            rows.append(row)
            print(f"{name} {setting} seed {seed}: val hub {row['val/hub']:.3f} exp {row['val/exp']:.3f}", flush=True)
    text = markdown(rows, f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after", args.setting)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
