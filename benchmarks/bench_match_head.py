"""Match-head settings against dense ranking, on the validation split of a finished demo.

The head is fitted on the train split's vectors read back from the demo collection (no
encoding), calibrated on the val split, and re-ranks each val query's dense top N; the
table gives recall against the dense ranking, the head's ECE on the re-ranked pairs and
the CPU time of fitting (``time.process_time``).

    python benchmarks/bench_match_head.py                   # the demo in the toolkit cache
    python benchmarks/bench_match_head.py --demo DIR --rerank 10

Prints a table and writes benchmarks/results/match_head.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "match_head.md"
KEYS = [f"{d}/R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]


def main() -> None:
    import torch

    from retrieval.config import MatchConfig
    from retrieval.demo import split_vectors
    from retrieval.evaluate import ranking_metrics, retrieval_rankings_from_embeddings
    from retrieval.evaluate.rerank_eval import rerank_metrics
    from retrieval.match import fit_match_head
    from retrieval.paths import cache_dir

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", default=None, help="finished demo folder (default: the toolkit cache)")
    parser.add_argument("--rerank", type=int, default=10, help="top-N re-ranked")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    collection = (Path(args.demo) if args.demo else cache_dir("demo")) / "collection"
    train, val = split_vectors(collection, "train"), split_vectors(collection, "val")
    texts, images = torch.from_numpy(np.asarray(val[1])), torch.from_numpy(np.asarray(val[0]))
    t2i, i2t = retrieval_rankings_from_embeddings(texts, images, val[3])
    dense = {**ranking_metrics(t2i, (1, 5, 10), "t2i/"), **ranking_metrics(i2t, (1, 5, 10), "i2t/")}
    rows = [("dense (no re-ranking)", [dense[k] for k in KEYS], "", "")]
    settings = {
        "epochs 5, hidden 64 (default)": MatchConfig(),
        "epochs 10": MatchConfig(epochs=10, hidden=256),
        "epochs 20": MatchConfig(epochs=20, hidden=256),
        "epochs 5, hidden 256": MatchConfig(hidden=256),
        "epochs 5, hidden 256, 8 negatives": MatchConfig(hidden=256, negatives=8),
    }
    for name, config in settings.items():
        t0 = time.process_time()
        fitted = fit_match_head(train, config, val=val)
        cpu = time.process_time() - t0
        m, _ = rerank_metrics(fitted.head, texts, images, val[3], t2i, i2t, (1, 5, 10), args.rerank)
        rows.append((f"re-rank {args.rerank}: {name}", [m[f"rerank/{k}"] for k in KEYS], f"{m['match/ECE']:.3f}",
                     f"{cpu:.0f}"))  # fmt: skip
    lines = [
        f"# Match head settings: re-ranking the dense top {args.rerank} on the OpenMoji val split",
        "",
        "| ranking | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | ECE | fit CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rec, ece, cpu in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {ece} | {cpu} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
