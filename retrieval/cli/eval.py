"""``retrieval eval --model MODEL DATA``: retrieval metrics of a model on a pair set, and a report folder."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_collection, require_file, require_input, require_model
from retrieval.cli.options import MODEL_HELP, config_option, cosine_type, given
from retrieval.config import EvalConfig
from retrieval.corpus.config import LeakageConfig


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
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--collection",
        default=None,
        help="collection made by this model from DATA: a folder or a Milvus location (index vs exact)",
    )
    p.add_argument("--out", default=None, metavar="REPORT_DIR", help="report folder (default: in the cache)")
    option = functools.partial(config_option, p, EvalConfig)
    option("ks", "-k", "--ks", nargs="+", metavar="K", help="cutoffs K")
    option(
        "zero_shot_label_column",
        "--zero-shot-labels",
        metavar="COLUMN",
        help="metadata column with class names",
    )
    option(
        "templates", "--template", action="append", type=str, metavar="TEMPLATE",
        help="zero-shot prompt with {} for the class name (repeatable)",
    )  # fmt: skip
    option("split", "--split", help="split of DATA to read (e.g. test)")
    option(
        "image_root",
        "--image-root",
        metavar="DIR",
        help="folder relative image paths start from (default: the manifest's)",
    )
    option("image_column", "--image-column", help="manifest column with the image path")
    option("caption_column", "--caption-column", help="manifest column with the caption(s)")
    option("id_column", "--id-column", help="manifest column naming the image (none: its path)")
    option("batch_size", "--batch-size", help="items per forward pass")
    option("chunk_size", "--chunk-size", help="queries/candidates per block of scores")
    option("refine", "--refine", help="with --collection: exact re-scoring factor")
    option(
        "index_filter", "--index-filter",
        help="with --collection holding images and texts: filtered search as a Searcher does (where), or "
        "an unfiltered ANN search then keeping one modality (post: measures the index itself)",
    )  # fmt: skip
    option(
        "hubness", "--hubness", choices=("isoftmax", "csls"),
        help="also rank after query-bank normalisation (hub/... metrics); needs a query bank",
    )  # fmt: skip
    option(
        "expansion", "--expand", action="store_true",
        help="also rank with each query expanded through the query bank's pairs (exp/... metrics; "
        "hubness-corrected too with --hubness)",
    )  # fmt: skip
    p.add_argument(
        "--query-bank",
        default=None,
        metavar="FILE",
        help="query bank (.querybank.npz) for --hubness / --expand (default: the one stored beside --collection)",
    )
    option("rerank", "--rerank", help="re-rank each query's dense top-N by the model's match head")
    option(
        "hybrid_fields", "--hybrid", type=_field_list, metavar="FIELD[,FIELD]",
        help="with --collection: also text->image by BM25 over these text fields of the image items and fused "
        "with the dense search (dense/, lexical/, hybrid/ keys; `all`: every indexed field)",
    )  # fmt: skip
    option("fusion", "--fusion", help="with --hybrid: how the two rankings are fused")
    option("rrf_k", "--rrf-k", metavar="K", help="with --fusion rrf: the rank constant")
    option("alpha", "--alpha", help="with --fusion weighted: share of the dense search")
    option("hybrid_candidates", "--candidates", metavar="N", help="with --hybrid: hits of each arm fused")
    option(
        "tune_hybrid", "--tune-hybrid", action="store_true",
        help="with --hybrid: choose RRF k or alpha on a validation share of the captions (--tune-share), "
        "report on the others",
    )  # fmt: skip
    option(
        "tune_share", "--tune-share", help="with --tune-hybrid: share of the images whose captions validate"
    )
    p.add_argument(
        "--leakage", default=None, metavar="TRAIN",
        help="also report test images with a near-duplicate in the training data TRAIN (a corpus, or a "
        "collection this model embedded), and recall without them",
    )  # fmt: skip
    p.add_argument(
        "--leakage-threshold", default=None, metavar="T", type=cosine_type("--leakage-threshold", positive=True),
        help=f"cosine at or above which a test image counts as a copy (default: {LeakageConfig().threshold})",
    )  # fmt: skip
    option("n_samples", "--samples", help="queries shown in each sample grid")
    option("device", "--device", help="torch device (none: cuda when available)")
    option("runtime", "--runtime", help="how the towers run: torch, onnx (ONNX Runtime), or auto")
    option(
        "feature_cache",
        "--no-feature-cache",
        action="store_false",
        help="neither read nor add image tower features in the feature cache",
    )
    option("progress", "--no-progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def _field_list(value: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in value.split(",") if f.strip())
    if not fields:
        raise argparse.ArgumentTypeError(f"expected field names separated by commas, received {value!r}")
    return fields


def run(args: argparse.Namespace) -> int:
    import contextlib
    import time
    from pathlib import Path

    from retrieval.data import read_corpus
    from retrieval.data.records import describe_skips
    from retrieval.evaluate import evaluate_model, write_report
    from retrieval.model import load_model
    from retrieval.paths import cache_dir

    config = EvalConfig().replace(**given(args, EvalConfig))
    require_input(args.data, "pairs", flag="DATA")
    require_model(args.model)
    if args.collection:
        require_collection(args.collection, flag="--collection")
    elif config.hybrid_fields:
        from retrieval.cli.parsing import UsageError

        raise UsageError("--hybrid measures through a collection: give --collection COLLECTION")
    if args.query_bank:
        require_file(args.query_bank, "query bank", flag="--query-bank")
    if args.leakage:
        require_input(args.leakage, "training data", flag="--leakage")
    elif args.leakage_threshold is not None:
        raise ValueError("--leakage-threshold needs --leakage TRAIN (the training data to compare with)")
    out = Path(args.out) if args.out else cache_dir("reports") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    corpus = read_corpus(
        args.data,
        image_column=config.image_column,
        caption_column=config.caption_column,
        id_column=config.id_column,
        split=config.split,
        image_root=config.image_root,
    )
    pairs = corpus.require_pairs("evaluation")
    if pairs.skipped:
        print(f"{args.data} ({corpus.reader}): {describe_skips(pairs.skipped)}")
    model = load_model(args.model, device=config.device, runtime=config.runtime)
    with contextlib.ExitStack() as stack:
        collection = None
        if args.collection:
            from indexes import open_collection

            collection = stack.enter_context(open_collection(args.collection, read_only=True))
        bank = None
        if config.hubness or config.expansion:
            from retrieval.search import QueryBank, query_bank_path

            if args.query_bank is None and args.collection is None:
                flag = "--hubness" if config.hubness else "--expand"
                raise ValueError(f"{flag} needs a query bank: pass --query-bank FILE or --collection DIR")
            bank = QueryBank.load(args.query_bank or query_bank_path(args.collection))
        result = evaluate_model(model, pairs, collection=collection, config=config, query_bank=bank)
    if args.leakage:
        from retrieval.corpus.leakage import with_leakage

        leakage = LeakageConfig(
            **({"threshold": args.leakage_threshold} if args.leakage_threshold is not None else {}),
            ks=config.ks, batch_size=config.batch_size, chunk_size=config.chunk_size, device=config.device,
            progress=config.progress, image_column=config.image_column, caption_column=config.caption_column,
            id_column=config.id_column, image_root=config.image_root,
        )  # fmt: skip
        result = with_leakage(result, model, args.leakage, leakage)
    write_report(result, out, n_samples=config.n_samples, seed=config.seed)
    m = result.metrics
    print(f"{len(result.captions)} captions, {len(result.images)} images, {len(result.skipped)} skipped")
    via = [d for d in ("t2i", "i2t") if f"index/{d}/R@{result.ks[0]}" in m]  # directions the collection has
    print(f"{'K':>5} {'t2i R@K':>9} {'i2t R@K':>9}" + "".join(f" {'index ' + d:>10}" for d in via))
    for k in result.ks:
        index = "".join(f" {m[f'index/{d}/R@{k}']:>10.4f}" for d in via)
        print(f"{k:>5} {m[f't2i/R@{k}']:>9.4f} {m[f'i2t/R@{k}']:>9.4f}{index}")
    if result.index is not None:
        for note in result.index.notes:
            print(note)
    print(f"MRR t2i {m['t2i/MRR']:.4f}  i2t {m['i2t/MRR']:.4f}")
    if config.hubness:
        for k in result.ks:
            print(f"{k:>5} hub t2i R@K {m[f'hub/t2i/R@{k}']:.4f}  hub i2t R@K {m[f'hub/i2t/R@{k}']:.4f}")
    if config.expansion:
        for k in result.ks:
            print(f"{k:>5} exp t2i R@K {m[f'exp/t2i/R@{k}']:.4f}  exp i2t R@K {m[f'exp/i2t/R@{k}']:.4f}")
    if config.rerank:
        rer = ", ".join(f"t2i R@{k} {m[f'rerank/t2i/R@{k}']:.4f}" for k in result.ks)
        print(f"re-ranked top {config.rerank}: {rer}; ECE {m['match/ECE']:.4f}")
    if result.hybrid is not None:
        print(f"text->image through the collection ({result.hybrid.n_queries} captions):")
        print(f"{'K':>5} {'dense':>9} {'lexical':>9} {'hybrid':>9}")
        for k in result.ks:
            print(
                f"{k:>5} {m[f'dense/t2i/R@{k}']:>9.4f} {m[f'lexical/t2i/R@{k}']:>9.4f} {m[f'hybrid/t2i/R@{k}']:>9.4f}"
            )
        for note in result.hybrid.notes:
            print(note)
    if result.leakage is not None:
        print(f"leakage: {result.leakage}")
    if result.zero_shot is not None:
        print("zero-shot " + ", ".join(f"{n} {v:.4f}" for n, v in result.zero_shot.accuracy.items()))
    print(f"report: {out}")
    return 0
