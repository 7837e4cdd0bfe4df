"""Parsing a command line the way argparse users expect: options and positionals in any order, the
global flags before or after the subcommand, errors printed with the subcommand's own usage.

argparse's subparsers cannot be parsed intermixed (``parse_intermixed_args`` refuses a parser with
subparsers) and report their errors with the usage of whichever parser stopped. So the command line
is parsed in two steps: the leading global flags and the command (and, for ``classify`` / ``match``,
the action) are read here by hand, then the rest by the command's own parser with
``parse_intermixed_args``. Every command's parser also takes the global flags (:func:`add_globals`),
so ``retrieval search COLL "a cat" -v`` and ``retrieval -v search COLL "a cat"`` mean the same.

Known limit (argparse's too): an option taking several values (``eval -k 1 5 10``) takes every
value up to the next option, so a positional right after it is read as one more value: put the
positional before it (``eval DATA -k 1 5 10 --model M``) or another option after it. After ``--``
everything is a positional (a query starting with ``-``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Sequence

__all__ = ["UsageError", "add_globals", "add_globals_to_commands", "parse_command_line", "split_overrides"]

GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


class UsageError(ValueError):
    """A command line that parses but does not make sense (e.g. two DATA arguments): printed with the
    command's usage, exit status 2."""


def add_globals(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The flags every command takes, before or after its name. On a command's parser they default
    to "not given" (``SUPPRESS``) so they add to what was given before the command."""
    group = parser if top else parser.add_argument_group("global options")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="more log output, and the traceback of an error (-vv: debug)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="only warnings and errors",
    )


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    sub = _subparsers(parser)
    if sub is None:
        return [parser]
    seen: dict[int, argparse.ArgumentParser] = {}
    for child in sub.choices.values():  # aliases map to the same parser
        seen.setdefault(id(child), child)
    return [leaf for child in seen.values() for leaf in _leaves(child)]


def add_globals_to_commands(top: argparse.ArgumentParser) -> None:
    """Give every command's parser (down to ``classify train`` and the like) the global flags."""
    for leaf in _leaves(top):
        if leaf is not top:
            add_globals(leaf)


def _is_global(token: str) -> bool:
    return token in GLOBAL_FLAGS or bool(re.fullmatch(r"-[vq]+", token))


def _choose(
    parser: argparse.ArgumentParser, sub: argparse._SubParsersAction, name: str, what: str
) -> argparse.ArgumentParser:
    if name in sub.choices:
        return sub.choices[name]
    close = difflib.get_close_matches(name, list(sub.choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    parser.error(f"unknown {what} {name!r}{hint}; expected one of {', '.join(sub.choices)}")
    raise AssertionError("argparse.error returns only by raising SystemExit")


def parse_command_line(
    top: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """``(namespace, parser of the command)`` for ``argv``; argparse errors exit (status 2) with the
    usage of the parser that is at fault. ``namespace.command`` is ``None`` when no command was given."""
    tokens = list(argv)
    head: list[str] = []
    while tokens and tokens[0].startswith("-") and tokens[0] != "--":
        head.append(tokens.pop(0))
    namespace = top.parse_args(head)  # global flags, -h / --version; no command in it
    sub = _subparsers(top)
    if not tokens or sub is None:
        return namespace, top
    names: list[str] = []
    pending: list[str] = []  # global flags between a command and its action, for the action's parser
    parser = top
    while sub is not None:
        while names and tokens and (_is_global(tokens[0]) or tokens[0] in ("-h", "--help")):
            flag = tokens.pop(0)
            if flag in ("-h", "--help"):  # `retrieval classify -h`: the command's help
                parser.print_help()
                parser.exit()
            pending.append(flag)
        if not tokens:
            parser.error(f"give an action: one of {', '.join(sub.choices)}")
        name = tokens.pop(0)
        parser = _choose(parser, sub, name, "command" if not names else f"{' '.join(names)} action")
        names.append(name)
        setattr(namespace, sub.dest, name)
        sub = _subparsers(parser)
    return parser.parse_intermixed_args([*pending, *tokens], namespace), parser


def split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(positionals, overrides)``: the ``KEY=VALUE`` tokens (``lr=3e-4``, ``model.embed_dim=128``)
    apart from the others, wherever they stand on the line. A token naming an existing path stays a
    positional even when it looks like an override (``shards/split=train``)."""
    positionals: list[str] = []
    overrides: list[str] = []
    for token in tokens:
        if _OVERRIDE.match(token) and not os.path.exists(token):
            overrides.append(token)
        else:
            positionals.append(token)
    return positionals, overrides
