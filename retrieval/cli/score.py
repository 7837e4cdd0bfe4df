"""``retrieval score DATA --model M --out scores.parquet``: the image-caption cosine of every pair, and
the corpus filtered by it."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_input, require_model
from retrieval.cli.options import MODEL_HELP, config_option, cosine_type, given
from retrieval.cli.parsing import UsageError
from retrieval.corpus.config import ScoreConfig, check_fraction


def _fraction(text: str) -> float:
    try:
        return check_fraction(text, "--keep-top-fraction")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--keep-top-fraction must", "must")) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score every image-caption pair of a corpus (cosine); filter it; resumable",
        description="Write the image-caption cosine of every pair of DATA to --out (Parquet) and a histogram "
        "beside it. With --keep-above or --keep-top-fraction, also write the kept pairs in DATA's own "
        "format (a manifest for manifests and image folders, Parquet for tables, shards for shards). "
        "Interrupted runs resume; re-running after adding data scores only the new pairs.",
    )
    p.add_argument(
        "data",
        help="pairs: manifest (.jsonl/.json/.csv/.tsv), table (.parquet/.arrow), image folder with captions, "
        ".tar shard(s) or a pattern, Karpathy or COCO captions JSON, datasets folder",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="FILE", help="the scores, one row per pair (.parquet)")
    p.add_argument(
        "--keep-above", dest="ScoreConfig.keep_above", default=argparse.SUPPRESS, metavar="T",
        type=cosine_type("--keep-above"), help="keep the pairs whose cosine is at least T",
    )  # fmt: skip
    p.add_argument(
        "--keep-top-fraction", dest="ScoreConfig.keep_top_fraction", default=argparse.SUPPRESS, metavar="F",
        type=_fraction, help="keep this share of the pairs, best first (0.3: the best 30 %%)",
    )  # fmt: skip
    p.add_argument(
        "--filtered",
        default=None,
        metavar="PATH",
        help="where the kept pairs go (default: beside --out, e.g. scores.kept.jsonl, or scores.kept/ for shards)",
    )
    p.add_argument("--plot", default=None, metavar="PNG", help="the histogram (default: --out with .png)")
    p.add_argument("--no-plot", action="store_true", help="no histogram")
    p.add_argument(
        "--state",
        default=None,
        metavar="DIR",
        help="folder keeping what is done, for resuming (default: --out with .state, e.g. scores.state/)",
    )
    option = functools.partial(config_option, p, ScoreConfig)
    option("batch_size", "--batch-size", help="images or captions per forward pass")
    option("num_workers", "--workers", help="image decoding worker processes")
    option("chunk_size", "--chunk-size", help="pairs per committed shard")
    option("device", "--device", help="torch device (none: cuda when available)")
    option("bins", "--bins", help="bars of the histogram")
    option("split", "--split", help="only rows of this split")
    option("image_root", "--image-root", metavar="DIR", help="folder relative image paths start from")
    option("image_column", "--image-column", help="manifest column with the image")
    option("caption_column", "--caption-column", help="manifest column with the caption(s)")
    option("id_column", "--id-column", help="manifest column naming the image (none: its path)")
    option("progress", "--no-progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import score_pairs
    from retrieval.model import load_model

    options = given(args, ScoreConfig)
    if "keep_above" in options and "keep_top_fraction" in options:
        raise UsageError("give either --keep-above T or --keep-top-fraction F, not both")
    if args.filtered and not ("keep_above" in options or "keep_top_fraction" in options):
        raise UsageError("--filtered needs --keep-above T or --keep-top-fraction F")
    config = ScoreConfig().replace(**options)
    require_input(args.data, "corpus", flag="DATA")
    require_model(args.model)
    model = load_model(args.model, device=config.device)
    plot = None if args.no_plot else (args.plot or True)
    result = score_pairs(
        model, args.data, args.out, config, state=args.state, filtered=args.filtered, plot=plot
    )
    print(result)
    return 0
