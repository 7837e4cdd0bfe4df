"""``retrieval match train DATA --model DIR [--val DATA]``: the match head that re-ranks, saved beside the model."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_input, require_model
from retrieval.cli.data_options import add_data_options, read_options
from retrieval.cli.options import config_option, given
from retrieval.config import MatchConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="train the match head that re-ranks dense results (two-stage retrieval)",
        description="Train a match head on DATA with hard negatives mined from an index of the model's "
        "vectors, fit its temperature on --val, and save it beside the model (DIR/match_head), where "
        "search, eval --rerank and the service find it.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="fit the head and save it in the model folder")
    train.add_argument("data", help="training pairs (manifest, image folder or .tar shards)")
    train.add_argument("--model", required=True, help="model folder (the head is written to DIR/match_head)")
    train.add_argument("--val", default=None, metavar="DATA", help="held-out pairs for the temperature")
    option = functools.partial(config_option, train, MatchConfig)
    option("epochs", "--epochs", help="passes over the mined pairs")
    option("negatives", "--negatives", help="hard negatives per caption and per image")
    option("seed", "--seed", help="seed")
    add_data_options(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retrieval.data import read_pairs
    from retrieval.match import MATCH_HEAD_DIR, train_match_head
    from retrieval.model import TwinEncoder

    config = MatchConfig().replace(**given(args, MatchConfig))
    require_input(args.data, "training pairs", flag="DATA")
    require_model(args.model)
    options = read_options(args)
    val = read_pairs(args.val, **{**options, "split": None}) if args.val else None
    pairs = read_pairs(args.data, **options)
    result = train_match_head(TwinEncoder.load(args.model), pairs, config, val_pairs=val)
    result.head.save(Path(args.model) / MATCH_HEAD_DIR)
    ece = (
        f"; val ECE {result.val_ece_before:.3f} -> {result.val_ece:.3f}" if result.val_ece is not None else ""
    )
    print(
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, temperature {result.temperature:.2f}{ece}"
    )
    print(f"match head -> {Path(args.model) / MATCH_HEAD_DIR}")
    return 0
