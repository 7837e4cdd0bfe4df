"""The ``retrieval`` command line: a thin argparse front end.

Each subcommand lives in its own module of this package, which adds its parser
(``register(subparsers)``) and calls exactly one library function. Only this
package parses arguments or configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> module in this package that registers it; kept explicit (no discovery).
COMMANDS: dict[str, str] = {
    "info": "retrieval.cli.info",
    "index": "retrieval.cli.index",
    "check": "retrieval.cli.check",
    "compact": "retrieval.cli.compact",
    "copy": "retrieval.cli.copy",
    "embed": "retrieval.cli.embed",
    "search": "retrieval.cli.search",
    "eval": "retrieval.cli.eval",
    "serve": "retrieval.cli.serve",
    "train": "retrieval.cli.train",
    "demo": "retrieval.cli.demo",
    "classify": "retrieval.cli.classify",
    "match": "retrieval.cli.match",
    "export-model": "retrieval.cli.export_model",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval",
        description="Siamese cross-modal retrieval: train twin encoders, embed corpora, search and evaluate.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if verbose < 2:
        for noisy in ("httpx", "urllib3", "filelock", "PIL", "matplotlib", "ray", "faiss"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (``retrieval`` calls ``sys.exit`` on it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # user-caused: bad input, missing or damaged files, full disk
        print(f"error: {exc}", file=sys.stderr)
        return 1


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
