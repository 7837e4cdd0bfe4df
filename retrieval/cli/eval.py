"""``retrieval eval --model DIR DATA``: retrieval metrics of a model on a pair set, and a report folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure text->image and image->text retrieval (R@K, MRR, mAP, nDCG) and write a report",
        description="Encode the images and captions of DATA with the model, rank both ways and write "
        "metrics.json, report.md, plots, sample grids and per-query CSVs. With --collection, also "
        "compare exact search with the collection's index; with --zero-shot-labels, add zero-shot "
        "classification accuracy.",
    )
    p.add_argument("data", help="pairs: manifest (.jsonl/.csv/.tsv/.parquet), image folder, or .tar shard(s)")
    p.add_argument("--model", required=True, help="model folder (TwinEncoder.save layout)")
    p.add_argument(
        "--collection", default=None, help="collection made by this model from DATA (index vs exact)"
    )
    p.add_argument("--out", default=None, metavar="REPORT_DIR", help="report folder (default: in the cache)")
    p.add_argument("-k", "--ks", type=int, nargs="+", default=[1, 5, 10], help="cutoffs K (default: 1 5 10)")
    p.add_argument(
        "--zero-shot-labels", default=None, metavar="COLUMN", help="metadata column with class names"
    )
    p.add_argument(
        "--template", action="append", default=None, dest="templates",
        help="zero-shot prompt with {} for the class name (repeatable; default: a photo of a {}. and 3 more)",
    )  # fmt: skip
    p.add_argument("--split", default=None, help="split of DATA to read (e.g. test)")
    p.add_argument("--image-column", default="image", help="manifest column with the image path")
    p.add_argument("--caption-column", default="caption", help="manifest column with the caption(s)")
    p.add_argument("--id-column", default=None, help="manifest column naming the image (default: its path)")
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    p.add_argument("--chunk-size", type=int, default=4096, help="queries/candidates per block of scores")
    p.add_argument("--refine", type=int, default=None, help="with --collection: exact re-scoring factor")
    p.add_argument(
        "--index-filter", choices=("where", "post"), default="where",
        help="with --collection holding images and texts: filtered search as a Searcher does (where), or "
        "an unfiltered ANN search then keeping one modality (post: measures the index itself)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=8, help="queries shown in each sample grid")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import time
    from pathlib import Path

    from retrieval.config import EvalConfig
    from retrieval.data import read_pairs
    from retrieval.evaluate import evaluate_model, write_report
    from retrieval.model import TwinEncoder
    from retrieval.paths import cache_dir

    config = EvalConfig(
        chunk_size=args.chunk_size,
        n_samples=args.samples,
        zero_shot_label_column=args.zero_shot_labels,
        refine=args.refine,
        index_filter=args.index_filter,
        device=args.device,
        progress=not args.no_progress,
        **({"templates": tuple(args.templates)} if args.templates else {}),
    )
    out = Path(args.out) if args.out else cache_dir("reports") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    pairs = read_pairs(
        args.data,
        image_column=args.image_column,
        caption_column=args.caption_column,
        id_column=args.id_column,
        split=args.split,
    )
    model = TwinEncoder.load(args.model, device=args.device)
    with contextlib.ExitStack() as stack:
        collection = None
        if args.collection:
            from indexes import Collection

            collection = stack.enter_context(Collection.open(args.collection, read_only=True))
        result = evaluate_model(
            model, pairs, ks=args.ks, batch_size=args.batch_size, collection=collection, config=config
        )
    write_report(result, out, n_samples=config.n_samples, seed=config.seed)
    m = result.metrics
    print(f"{len(result.captions)} captions, {len(result.images)} images, {len(result.skipped)} skipped")
    print(f"{'K':>5} {'t2i R@K':>9} {'i2t R@K':>9}" + (f" {'index t2i':>10}" if result.index else ""))
    for k in result.ks:
        index = f" {m[f'index/t2i/R@{k}']:>10.4f}" if result.index else ""
        print(f"{k:>5} {m[f't2i/R@{k}']:>9.4f} {m[f'i2t/R@{k}']:>9.4f}{index}")
    print(f"MRR t2i {m['t2i/MRR']:.4f}  i2t {m['i2t/MRR']:.4f}")
    if result.zero_shot is not None:
        print("zero-shot " + ", ".join(f"{n} {v:.4f}" for n, v in result.zero_shot.accuracy.items()))
    print(f"report: {out}")
    return 0
