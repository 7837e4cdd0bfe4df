"""``where`` filters as Milvus expressions: exact translations, safe literals, clear errors before any request.

(That the expressions select what the local collection selects, tricky strings included, is
checked against real Milvus in test_indexes_contract.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from indexes.milvus.expr import compile_where

KNOWN = ["lang", "year", "tag", "cap", "we\\ird'key"]


@pytest.mark.parametrize(
    ("where", "expr"),
    [
        ({"lang": "en"}, 'meta["lang"] == "en"'),
        ({"lang": ["en", "fr"]}, '(meta["lang"] == "en" or meta["lang"] == "fr")'),
        ({"year": {"gte": 2000, "lt": 2010}}, 'meta["year"] >= 2000 and meta["year"] < 2010'),
        ({"tag": {"ne": "x"}}, '((exists meta["tag"]) and meta["tag"] != "x")'),
        ({"cap": None, "lang": "en"}, '(not (exists meta["cap"])) and meta["lang"] == "en"'),
        ({"cap": {"ne": None}, "lang": "en"}, '(exists meta["cap"]) and meta["lang"] == "en"'),
        ({"tag": ["a", None]}, '(meta["tag"] == "a" or (not (exists meta["tag"])))'),
        ({"year": np.int64(3), "tag": True}, 'meta["year"] == 3 and meta["tag"] == true'),
        ({"year": {"gt": 0.5}}, 'meta["year"] > 0.5'),
        ({"year": -7}, 'meta["year"] == -7'),
        ({"we\\ird'key": 1}, 'meta["we\\\\ird\'key"] == 1'),
    ],
)
def test_translations(where, expr) -> None:
    assert compile_where(where, KNOWN) == expr


def test_user_text_is_always_a_quoted_literal() -> None:
    attack = 'x" || id >= 0 || "\\'
    expr = compile_where({"tag": attack}, KNOWN)
    assert expr == 'meta["tag"] == "x\\" || id >= 0 || \\"\\\\"'
    assert compile_where({"tag": "a\nb\tc\rd"}, KNOWN) == 'meta["tag"] == "a\\nb\\tc\\rd"'
    assert compile_where({"tag": "naïve 🙂"}, KNOWN) == 'meta["tag"] == "naïve 🙂"'  # no \\u escapes


def test_an_empty_in_list_matches_nothing() -> None:
    assert compile_where({"lang": [], "year": 3}, KNOWN) is None
    with pytest.raises(ValueError, match="unknown filter field"):
        compile_where({"lang": [], "nope": 3}, KNOWN)  # errors still come first


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"nope": 1}, "unknown filter field 'nope'"),
        ({"lang": {"like": "e%"}}, "unknown operator 'like'"),
        ({"lang": {}}, "empty operator dict"),
        ({"year": {"gt": None}}, "range operator 'gt' needs a number or a string"),
        ({"year": {"lt": True}}, "range operator 'lt' needs a number or a string"),
        ({"year": {"in": 3}}, "'in' needs a list"),
        ({"year": float("nan")}, "not finite"),
        ({"year": 1 << 70}, "does not fit in a signed 64-bit integer"),
        ({"year": {"eq": [1, 2]}}, "must be a str, number, bool or None"),
        ({"year": [{"a": 1}]}, "each 'in' value must be a str, number, bool or None"),
        ({}, "empty dict"),
    ],
)
def test_errors(where, message) -> None:
    with pytest.raises(ValueError, match=message):
        compile_where(where, KNOWN)
