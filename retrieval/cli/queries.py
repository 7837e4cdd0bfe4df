"""Queries and filters from the command line, the same for every command that takes them: a query
list file (``--queries FILE`` / ``--query-file FILE``) and ``--where FIELD=VALUE`` options as a
metadata filter (:mod:`indexes.metadata`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from retrieval.cli.checks import require_file

__all__ = ["parse_where", "read_queries"]


def parse_where(pairs: Sequence[str]) -> dict[str, Any] | None:
    """``field=value`` strings -> a where filter; a repeated field means "any of"; numbers are parsed."""
    where: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep or not field:
            raise ValueError(f"--where expects field=value, received {pair!r}")
        value: Any = raw
        try:
            value = json.loads(raw)
            if not isinstance(value, (int, float, bool)):
                value = raw
        except ValueError:
            pass
        if field in where:
            previous = where[field]
            where[field] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            where[field] = value
    return where or None


def read_queries(path: str, *, flag: str = "--queries") -> list[str]:
    """The non-blank lines of ``path`` (``-``: stdin), without their line ends."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        require_file(path, "query list", flag=flag)
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise ValueError(f"no query in {path} ({flag}): write one text query per line")
    return queries
