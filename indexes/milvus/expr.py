"""``where`` filters (the language of :mod:`indexes.metadata`) as Milvus boolean expressions.

Every item's metadata is one JSON field, ``meta``; a filter on ``"lang"`` reads ``meta["lang"]``::

    {"lang": "en"}                        meta["lang"] == "en"
    {"lang": ["en", "fr"]}                (meta["lang"] == "en" or meta["lang"] == "fr")
    {"year": {"gte": 2000, "lt": 2010}}   meta["year"] >= 2000 and meta["year"] < 2010
    {"tag": {"ne": "x"}}                  ((exists meta["tag"]) and meta["tag"] != "x")
    {"caption": None}                     (not (exists meta["caption"]))

User text never reaches the expression as syntax: field names and string values become
double-quoted literals in which only ``\\``, ``"``, newline, carriage return and tab are
escaped (the escapes both Milvus and Milvus Lite read; every other character stands for
itself), numbers are formatted by Python, and anything else is refused before a request is
sent; ``exists`` and ``not`` always sit in their own parentheses (servers read
``exists a and b`` as ``exists (a and b)``). ``in`` becomes a chain of ``==`` (Milvus Lite has no ``in`` on JSON paths, and older
servers refuse mixed-type lists); an empty ``in`` list matches nothing, which :func:`compile_where`
reports as ``None`` so the caller need not ask the server.

Semantics match the local collection, with two differences worth knowing:

* a boolean and a number compare equal on Milvus Lite and locally (``True == 1``) but not on
  Milvus servers; keep one type per field;
* servers before 2.4 count an explicit JSON ``null`` as present, so there ``{"f": None}``
  matches only items without the field and ``ne`` also matches nulls; omit a field rather than
  storing ``None`` when filtering on it matters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from indexes.metadata import FILTER_OPERATORS

__all__ = ["JSON_FIELD", "compile_where", "literal"]

JSON_FIELD = "meta"
_INT64 = (-(1 << 63), (1 << 63) - 1)
_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def literal(field: str, value: Any, what: str) -> str:
    """``value`` as an expression literal; raises ``ValueError`` for anything that is not a plain scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"filter on {field!r}: {what} {value} does not fit in a signed 64-bit integer")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter on {field!r}: {what} {value!r} is not finite; use a finite number")
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise ValueError(
        f"filter on {field!r}: {what} must be a str, number, bool or None, received {type(value).__name__}"
    )


def _path(field: str) -> str:
    return f"{JSON_FIELD}[{_quote(field)}]"


def _clause(field: str, op: str, value: Any) -> str | None:
    """One condition as an expression; None when it can match nothing."""
    path = _path(field)
    if op == "in":
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(
                f"filter on {field!r}: 'in' needs a list of values, received {type(value).__name__}"
            )
        values = list(value)
        if not values:
            return None
        what = "each 'in' value"
        parts = [f"{path} == {literal(field, v, what)}" for v in values if v is not None]
        if len(parts) < len(values):
            parts.append(f"(not (exists {path}))")
        return "(" + " or ".join(parts) + ")"
    if isinstance(value, np.generic):
        value = value.item()
    if op in _RANGE:
        if value is None or isinstance(value, bool):
            raise ValueError(
                f"filter on {field!r}: range operator {op!r} needs a number or a string, received {value!r}"
            )
        return f"{path} {_RANGE[op]} {literal(field, value, f'the {op!r} value')}"
    if value is None:
        return f"(exists {path})" if op == "ne" else f"(not (exists {path}))"
    lit = literal(field, value, f"the {op!r} value")
    if op == "ne":
        return f"((exists {path}) and {path} != {lit})"
    return f"{path} == {lit}"


def compile_where(where: Any, known: list[str]) -> str | None:
    """``where`` -> a Milvus boolean expression over the ``meta`` JSON field.

    ``known`` are the field names present in the collection (filtering on another is an
    error, as in the local collection). Returns None when the filter can match nothing (an
    empty ``in`` list). Raises ``ValueError`` for anything malformed, before any request.
    """
    if not isinstance(where, dict):
        raise ValueError(f"where must be a dict like {{'field': value}}, received {type(where).__name__}")
    if not where:
        raise ValueError("where is an empty dict: pass None to search without a filter")
    clauses: list[str | None] = []
    for field, cond in where.items():
        if not isinstance(field, str) or field not in known:
            raise ValueError(
                f"unknown filter field {field!r}; fields present in this collection: {sorted(known)}: "
                "check the spelling, or add items carrying that field first"
            )
        if isinstance(cond, dict):
            if not cond:
                raise ValueError(f"filter on {field!r} has an empty operator dict; use e.g. {{'gte': 1}}")
            ops = list(cond.items())
        elif isinstance(cond, (list, tuple, set, frozenset)):
            ops = [("in", list(cond))]
        else:
            ops = [("eq", cond)]
        for op, value in ops:
            if op not in FILTER_OPERATORS:
                raise ValueError(
                    f"filter on {field!r}: unknown operator {op!r}; expected one of {sorted(FILTER_OPERATORS)}"
                )
            clauses.append(_clause(field, op, value))
    if any(c is None for c in clauses):
        return None
    return " and ".join(c for c in clauses if c is not None)
