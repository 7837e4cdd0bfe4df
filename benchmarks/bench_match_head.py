"""Match-head settings against dense ranking, on the validation split of a finished demo.

Pooled heads (:class:`retrieval.match.MatchHead`) are fitted on the train split's vectors read back
from the demo collection (no encoding). Cross-attention heads
(:class:`retrieval.match_cross.CrossMatchHead`) read the demo model's image grids and caption
tokens, computed once per split with the frozen model (the time is printed, not counted in the
fit). Every head is calibrated on the val split and re-ranks each val query's dense top N; the
table gives recall against the dense ranking, the head's ECE on the re-ranked pairs, the CPU time
of fitting (``time.process_time``) and the re-ranking time per query (wall clock).

    python benchmarks/bench_match_head.py                   # the demo in the toolkit cache
    python benchmarks/bench_match_head.py --demo DIR --rerank 10
    python benchmarks/bench_match_head.py --limit 300 --only cross --out /tmp/check.md   # a quick check

Prints a table and writes benchmarks/results/match_head.md (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "match_head.md"
KEYS = [f"{d}/R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]


def _limit(vectors: tuple[Any, ...], paths: list[str], n: int | None) -> tuple[tuple[Any, ...], list[str]]:
    """The first ``n`` images of a split and their captions (all of it without ``n``)."""
    if n is None:
        return vectors, paths
    images, texts, captions, g = vectors
    keep = np.flatnonzero(np.asarray(g) < n)
    return (
        np.asarray(images)[:n],
        np.asarray(texts)[keep],
        [captions[t] for t in keep],
        np.asarray(g)[keep],
    ), paths[:n]


def main() -> None:
    import torch

    from retrieval.config import CrossMatchConfig, MatchConfig
    from retrieval.demo import split_image_paths, split_vectors
    from retrieval.evaluate import ranking_metrics, retrieval_rankings_from_embeddings
    from retrieval.evaluate.rerank_eval import cross_rerank_metrics, rerank_metrics
    from retrieval.match import fit_match_head
    from retrieval.match_cross import cross_features, fit_cross_match_head
    from retrieval.model import TwinEncoder
    from retrieval.paths import cache_dir

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", default=None, help="finished demo folder (default: the toolkit cache)")
    parser.add_argument("--rerank", type=int, default=10, help="top-N re-ranked")
    parser.add_argument("--only", choices=("pooled", "cross"), default=None, help="one kind of head")
    parser.add_argument(
        "--limit", type=int, default=None, help="first N images of each split (a quick check)"
    )
    parser.add_argument("--device", default=None, help="where cross heads train (default: CUDA when present)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    demo = Path(args.demo) if args.demo else cache_dir("demo")
    collection = demo / "collection"
    train, train_paths = _limit(
        split_vectors(collection, "train"), split_image_paths(collection, "train"), args.limit
    )
    val, val_paths = _limit(
        split_vectors(collection, "val"), split_image_paths(collection, "val"), args.limit
    )
    texts, images = torch.from_numpy(np.asarray(val[1])), torch.from_numpy(np.asarray(val[0]))
    t2i, i2t = retrieval_rankings_from_embeddings(texts, images, val[3])
    dense = {**ranking_metrics(t2i, (1, 5, 10), "t2i/"), **ranking_metrics(i2t, (1, 5, 10), "i2t/")}
    rows = [("dense (no re-ranking)", [dense[k] for k in KEYS], "", "", "")]

    def row(name: str, m: dict[str, float], cpu: float) -> None:
        rows.append((f"re-rank {args.rerank}: {name}", [m[f"rerank/{k}"] for k in KEYS], f"{m['match/ECE']:.3f}",
                     f"{cpu:.0f}", f"{m['rerank/ms_per_query']:.2f}"))  # fmt: skip
        print(rows[-1], flush=True)

    pooled = {
        "pooled, epochs 5, hidden 64 (default)": MatchConfig(),
        "pooled, epochs 10": MatchConfig(epochs=10, hidden=256),
        "pooled, epochs 20": MatchConfig(epochs=20, hidden=256),
        "pooled, epochs 5, hidden 256": MatchConfig(hidden=256),
        "pooled, epochs 5, hidden 256, 8 negatives": MatchConfig(hidden=256, negatives=8),
    }
    for name, config in pooled.items() if args.only != "cross" else []:
        t0 = time.process_time()
        fitted = fit_match_head(train, config, val=val)
        cpu = time.process_time() - t0
        row(
            name,
            rerank_metrics(fitted.head, texts, images, val[3], t2i, i2t, (1, 5, 10), args.rerank)[0],
            cpu,
        )

    crossed = {
        "cross, width 128, 1 layer (default)": CrossMatchConfig(),
        "cross, width 128, 2 layers": CrossMatchConfig(layers=2),
    }
    notes = []
    if args.only != "pooled":
        model_dir = json.loads((demo / "demo.json").read_text(encoding="utf-8"))["train"]["model_dir"]
        model = TwinEncoder.load(model_dir)
        t0 = time.perf_counter()
        train_f = cross_features(
            model, train_paths, train[2], train[3], image_vecs=train[0], text_vecs=train[1]
        )
        val_f = cross_features(model, val_paths, val[2], val[3], image_vecs=val[0], text_vecs=val[1])
        seconds = time.perf_counter() - t0
        notes.append(
            f"Cross heads read grids {tuple(train_f.grid.shape[1:])} and tokens {tuple(train_f.tokens.shape[1:])}; "
            f"computing them for {len(train_paths) + len(val_paths)} images and "
            f"{len(train[2]) + len(val[2])} captions took {seconds:.0f} s (wall, not in fit CPU s)."
        )
        print(notes[-1], flush=True)
        for name, config in crossed.items():
            t0 = time.process_time()
            fitted = fit_cross_match_head(train_f, config, val=val_f, device=args.device)
            cpu = time.process_time() - t0
            row(name, cross_rerank_metrics(fitted.head, val_f, t2i, i2t, (1, 5, 10), args.rerank)[0], cpu)

    subset = f" (first {args.limit} images of each split)" if args.limit else ""
    lines = [
        f"# Match head settings: re-ranking the dense top {args.rerank} on the OpenMoji val split{subset}",
        "",
        "| ranking | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | ECE | fit CPU s | re-rank ms/query |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rec, ece, cpu, ms in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {ece} | {cpu} | {ms} |")
    text = "\n".join([*lines, "", *notes]) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
