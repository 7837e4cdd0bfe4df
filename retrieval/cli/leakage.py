"""``retrieval leakage TRAIN TEST --model M``: test images with a near-duplicate in the training data."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_input, require_model
from retrieval.cli.options import MODEL_HELP, config_option, cosine_type, given
from retrieval.corpus.config import LeakageConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leakage",
        help="find test images with a near-duplicate in the training data; recall with and without them",
        description="For every image of TEST, find its most similar image of TRAIN (exact cosine); those at or "
        "above --threshold are leaked. When TEST has captions, retrieval is measured over all queries and "
        "again without the leaked ones, so a split that is not honest shows.",
    )
    p.add_argument(
        "train", help="training data: any corpus `retrieval embed` reads, or a collection this model embedded"
    )
    p.add_argument("test", help="test data: pairs (for recall) or images")
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--threshold", dest="LeakageConfig.threshold", default=argparse.SUPPRESS, metavar="T",
        type=cosine_type("--threshold", positive=True),
        help=f"cosine at or above which a test image counts as a copy (default: {LeakageConfig().threshold}; "
        "depends on the model: see the histogram)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, metavar="DIR", help="write leakage.json, leakage.md and nearest.png here"
    )
    option = functools.partial(config_option, p, LeakageConfig)
    option("examples", "--examples", help="leaked test images listed")
    option("ks", "-k", "--ks", nargs="+", metavar="K", help="cutoffs K")
    option("batch_size", "--batch-size", help="images or captions per forward pass")
    option("chunk_size", "--chunk-size", help="training images compared at a time")
    option("device", "--device", help="torch device (none: cuda when available)")
    option("image_root", "--image-root", metavar="DIR", help="folder relative image paths start from")
    option("image_column", "--image-column", help="manifest column with the image")
    option("caption_column", "--caption-column", help="manifest column with the caption(s)")
    option("id_column", "--id-column", help="manifest column naming the image (none: its path)")
    option("progress", "--no-progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import check_leakage
    from retrieval.corpus.leakage import write_leakage
    from retrieval.model import load_model

    config = LeakageConfig().replace(**given(args, LeakageConfig))
    require_input(args.train, "training data", flag="TRAIN")
    require_input(args.test, "test data", flag="TEST")
    require_model(args.model)
    model = load_model(args.model, device=config.device)
    leakage = check_leakage(model, args.train, args.test, config)
    print(leakage)
    if args.out:
        print(f"report: {write_leakage(leakage, args.out)}")
    return 0
