"""The default recipe with and without each answer-quality part, at equal CPU time, on OpenMoji.

For each training setting (random batches, index-mined hard negatives) the default recipe
trains as it does by default (until validation plateaus, then a short decay), cut if it
reaches the same CPU-time budget (``time.process_time`` of this process, all its threads),
keeping the best validation epoch; the CPU time each used is in the notes. Then every trained model is measured
on val and test: dense, with hubness correction (inverted softmax, a query bank of the
train split), re-ranked by a match head (trained on the train split, temperature on val),
and both. The default is the row with the best validation mean recall.

    python benchmarks/bench_recipe_answers.py                          # 600 s CPU per training
    python benchmarks/bench_recipe_answers.py --cpu-budget 300 --settings random hard

Prints a table and writes benchmarks/results/recipe_answers.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_answers.md"
SETTINGS = {
    "random": {},
    "hard": {"hard_negatives": True, "hard_negative_warmup": 2, "hard_negative_every": 2},
}


def _recalls(m: dict, prefix: str = "") -> list[float]:
    return [m[f"{prefix}{d}/R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]


def main() -> None:
    from retrieval.config import EvalConfig, MatchConfig, TrainConfig
    from retrieval.data import read_pairs
    from retrieval.datasets import build_openmoji
    from retrieval.evaluate import evaluate_model
    from retrieval.match import train_match_head
    from retrieval.model import TwinEncoder
    from retrieval.search import build_query_bank
    from retrieval.train import train

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-budget", type=float, default=600.0, help="CPU seconds of training per setting")
    parser.add_argument("--epochs", type=int, default=100, help="the recipe's epoch cap (validation decides)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rerank", type=int, default=20, help="top-N re-ranked by the match head")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate finished runs in --work instead of training"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed of every setting")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    data = build_openmoji(None, progress=False)
    splits = {s: read_pairs(str(data.manifests[s])) for s in ("train", "val", "test")}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="recipe-answers-"))
    rows = []
    for name in args.settings:
        config = TrainConfig(
            train_data=str(data.train), val_data=str(data.val), out_dir=str(work / name),
            epochs=args.epochs, seed=args.seed, progress=False, **SETTINGS[name],
        )  # fmt: skip
        if args.reuse and (work / name / "best").is_dir():
            model_dir, cpu, note = work / name / "best", float("nan"), "reused run"
        else:
            start = time.process_time()
            result = train(
                config, callback=lambda record, t0=start: time.process_time() - t0 > args.cpu_budget
            )
            cpu = time.process_time() - start
            model_dir = result.model_dir
            note = f"{result.epochs_completed} epochs, {result.steps} steps, {cpu:.0f} s CPU"
        print(f"{name}: trained ({note})", flush=True)
        model = TwinEncoder.load(model_dir, device="cpu").eval()
        bank = build_query_bank(model, splits["train"])
        head = train_match_head(model, splits["train"], MatchConfig(), val_pairs=splits["val"]).head
        model.attach_match_head(head)
        config_eval = EvalConfig(progress=False, top_n=0, hubness="isoftmax", rerank=args.rerank)
        for split in ("val", "test"):
            m = evaluate_model(model, splits[split], config=config_eval, query_bank=bank).metrics
            rows.append((name, "dense", split, _recalls(m), note))
            rows.append((name, "hubness", split, _recalls(m, "hub/"), ""))
            rows.append(
                (name, f"re-rank {args.rerank}", split, _recalls(m, "rerank/"), f"ECE {m['match/ECE']:.3f}")
            )
        # hubness then re-ranking: re-rank the corrected ranking's top N
        both = EvalConfig(progress=False, top_n=0)
        for split in ("val", "test"):
            m = _hub_then_rerank(model, splits[split], bank, head, args.rerank, both, evaluate_model)
            rows.append((name, f"hubness + re-rank {args.rerank}", split, m, ""))
        for row in rows:
            print(row, flush=True)
    best = max((r for r in rows if r[2] == "val"), key=lambda r: float(np.mean(r[3])))
    lines = [
        "# The recipe with and without hard negatives, hubness correction and re-ranking (equal CPU time)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.cpu_budget:.0f} s of "
        f"training CPU time per setting (a cap; training seed {args.seed}); OpenMoji val / test splits.",
        "",
        "| training | ranking | split | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for train_name, ranking, split, rec, note in rows:
        lines.append(
            f"| {train_name} | {ranking} | {split} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {note} |"
        )
    lines += ["", f"Best by validation mean recall: training `{best[0]}`, ranking `{best[1]}`."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


def _hub_then_rerank(model, pairs, bank, head, n, config, evaluate_model) -> list[float]:  # type: ignore[no-untyped-def]
    """Recall when the match head re-ranks the top N of the hubness-corrected ranking."""
    import torch

    from retrieval.evaluate import retrieval_rankings_from_embeddings
    from retrieval.evaluate.rerank_eval import rerank_metrics
    from retrieval.search import Hubness
    from retrieval.search.hubness import item_penalties

    texts = model.encode_texts(pairs.captions())  # [T, D]
    images = model.encode_images(pairs.images())  # [I, D]
    g = pairs.text_to_image()
    hub = Hubness("isoftmax")
    p_img = torch.from_numpy(item_penalties(bank.vectors["text"], images.numpy(), hub))
    p_txt = torch.from_numpy(item_penalties(bank.vectors["image"], texts.numpy(), hub))
    one_t, one_i = torch.ones(len(texts), 1), torch.ones(len(images), 1)
    out = []
    for q_t, q_i, direction in (
        (torch.cat([texts, one_t], 1), torch.cat([images, -p_img[:, None]], 1), "t2i"),
        (torch.cat([texts, -p_txt[:, None]], 1), torch.cat([images, one_i], 1), "i2t"),
    ):
        t2i, i2t = retrieval_rankings_from_embeddings(q_t, q_i, g)

        class _Head:  # the head reads the original vectors, the ranking the corrected ones
            def probabilities(self, u, v):  # type: ignore[no-untyped-def]
                return head.probabilities(u[:, :-1], v[:, :-1])

        m, _ = rerank_metrics(_Head(), q_t, q_i, g, t2i, i2t, (1, 5, 10), n)
        out.append([m[f"rerank/{direction}/R@{k}"] for k in (1, 5, 10)])
    return out[0] + out[1]


if __name__ == "__main__":
    main()
