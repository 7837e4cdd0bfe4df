"""How an error reaches the terminal: one line, in the words of the command line.

Library messages are written for Python callers and may give hints as keyword arguments
(``pass image_column= / caption_column=``); on the command line the same hint is a flag
(``--image-column``). :func:`in_flag_words` rewrites such hints with the flags of the command that
failed (:func:`keyword_flags`), and :func:`one_line` turns any exception into one line.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["KEYWORD_ALIASES", "in_flag_words", "is_user_error", "keyword_flags", "one_line"]

# Exceptions whose message is meant for the user; any other type is shown with its name, as a bug.
_USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)
# `parser.set_defaults(**{KEYWORD_ALIASES: {"init_model": "--init"}})`: keywords a command's flags set
# under another name
KEYWORD_ALIASES = "_keyword_aliases"
_KEYWORD = re.compile(r"(?<![\w.\-])(?:[A-Z][A-Za-z]*\.)?([a-z][a-z0-9_]*)=(?!=)")
# hints about how Python code opens things, said the way the command line does it
_API_HINTS = (
    (
        re.compile(r"\b(?:re)?open(?: it| the collection)? with read_only=True"),
        "use a command that only reads it (search, info, check)",
    ),
)


def keyword_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Python keyword -> flag for the options of ``parser``: an option stored under ``dest`` (or a
    config field ``Cls.field``) answers to that name; aliases come from the parser's defaults."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in (argparse.SUPPRESS, "help"):
            continue
        flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
        flags[action.dest.rsplit(".", 1)[-1]] = flag
    flags.update(parser.get_default(KEYWORD_ALIASES) or {})
    return flags


def in_flag_words(message: str, flags: dict[str, str]) -> str:
    """``message`` with ``name=`` hints (also ``EvalConfig.name=``) written as the flags in ``flags``;
    names without a flag are left alone (on ``train`` a ``KEY=VALUE`` override is the spelling)."""

    def replace(match: re.Match[str]) -> str:
        flag = flags.get(match.group(1))
        if flag is None:
            return match.group(0)
        rest = message[match.end() : match.end() + 1]
        return flag if rest in ("", " ", "/", ",", ";", ")", ":") else f"{flag} "

    for pattern, words in _API_HINTS:
        message = pattern.sub(words, message)
    return _KEYWORD.sub(replace, message)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is of a kind whose message speaks to the user (bad input, missing files, a
    busy collection), rather than a bug whose traceback matters."""
    return isinstance(exc, _USER_ERRORS)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; an OS error as "what: file", an unexpected type with its name."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None and len(exc.args) > 1:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        message = f"{exc.strerror}: {files}"
    else:
        message = str(exc)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if not message:
        message = type(exc).__name__
    elif not is_user_error(exc):
        message = f"{type(exc).__name__}: {message}"
    return message
