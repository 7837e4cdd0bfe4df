"""The ``retrieval`` command line: a thin argparse front end.

Each subcommand lives in its own module of this package, which adds its parser
(``register(subparsers)``) and calls exactly one library function. Only this
package parses arguments or configures logging.

The command line keeps argparse users' habits (:mod:`retrieval.cli.parsing`): options and
positionals in any order, ``-v`` / ``-q`` before or after the command, a command's own usage on its
errors. An error is one line on stderr (:mod:`retrieval.cli.errors`; ``-v`` adds the traceback) and
the exit status says what happened (``EXIT_*`` below, listed in ``retrieval --help``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

# Exit statuses, the same for every command (shown by `retrieval --help` and in the README).
EXIT_OK = 0
EXIT_ERROR = 1  # an error (one line on stderr); `check`: damage found
EXIT_USAGE = 2  # the command line is wrong (printed with the command's usage)
# the command ran but did nothing of what was asked: no input to work on, or every input skipped
# (counted per reason); `check --repair`: repaired, but items were lost
EXIT_NOTHING_DONE = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (`train` leaves a checkpoint to --resume from)

# name -> module in this package that registers it; kept explicit (no discovery).
COMMANDS: dict[str, str] = {
    "info": "retrieval.cli.info",
    "index": "retrieval.cli.index",
    "check": "retrieval.cli.check",
    "compact": "retrieval.cli.compact",
    "text-index": "retrieval.cli.text_index",
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
    "dedup": "retrieval.cli.dedup",
    "export": "retrieval.cli.export",
    "score": "retrieval.cli.score",
    "leakage": "retrieval.cli.leakage",
    "map": "retrieval.cli.map",
}

EPILOG = f"""\
Options and positionals go in any order; -v / -q also after the command. `retrieval COMMAND -h`
shows a command's options.

exit status:
  {EXIT_OK}    success
  {EXIT_ERROR}    error, told in one line on stderr (-v adds the traceback); `check`: damage found
  {EXIT_USAGE}    wrong command line (the command's usage is printed)
  {EXIT_NOTHING_DONE}    nothing done: no input, or every input skipped (the reasons are counted);
       `check --repair`: repaired, but items were lost (listed)
  4    `check`: not checked, writers kept committing throughout (run it again)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); `train` leaves a checkpoint to --resume from"""

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING_DONE",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("siamese-retrieval")
    except Exception:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from retrieval.cli.parsing import add_globals, add_globals_to_commands

    parser = argparse.ArgumentParser(
        prog="retrieval",
        description="Siamese cross-modal retrieval: train twin encoders, embed corpora, search and evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_globals(parser, top=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    add_globals_to_commands(parser)
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
    """Run the command line; returns the process exit status (``retrieval`` calls ``sys.exit`` on it)."""
    from retrieval.cli.errors import in_flag_words, is_user_error, keyword_flags, one_line
    from retrieval.cli.parsing import UsageError, parse_command_line

    top = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, parser = parse_command_line(top, argv)
    except SystemExit as exc:  # argparse: help shown (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "command", None) is None:
        top.print_help()
        return EXIT_USAGE
    verbose, quiet = int(getattr(args, "verbose", 0) or 0), bool(getattr(args, "quiet", False))
    _configure_logging(verbose, quiet)
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {in_flag_words(one_line(exc), keyword_flags(parser))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `retrieval search ... | head`: the reader left; nothing to report
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # every error the command meets ends here, as one line
        if verbose:
            traceback.print_exc()
        message = in_flag_words(one_line(exc), keyword_flags(parser))
        hint = "" if verbose or is_user_error(exc) else " (run with -v for the traceback)"
        print(f"error: {message}{hint}", file=sys.stderr)
        return EXIT_NOTHING_DONE if _nothing_done(exc) else EXIT_ERROR


def _nothing_done(exc: BaseException) -> bool:
    """An input that gave nothing to do (an empty corpus, every item skipped): exit status 3."""
    from retrieval.data.records import EmptyCorpusError

    embed_job = sys.modules.get("retrieval.embed.job")  # imported only by the commands that embed
    nothing = (EmptyCorpusError,) + ((embed_job.NothingEmbeddedError,) if embed_job else ())
    return isinstance(exc, nothing)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in tests)
        pass


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
