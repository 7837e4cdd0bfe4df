"""A reference lexical matcher: what ``Collection.search_text`` promises, written the slow and obvious way.

Words: the text of each indexed field (``indexes.lexical.field_text``), decomposed (NFKD), combining
marks dropped, lower-cased, split on everything that is not a letter or a digit: what SQLite FTS5's
``unicode61 remove_diacritics 2`` does for the Latin, Greek and CJK text the tests use. BM25 with
Lucene's idf over the live items (k1 = 1.2, b = 0.75), the searched fields read as one text, OR
semantics; a filter chooses which items come back, not the statistics.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexes.lexical import field_text

__all__ = ["bm25_reference", "check_text_search", "words"]

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD.findall(plain.lower())


def bm25_reference(
    items: dict[int, dict[str, Any]],
    fields: Sequence[str],
    query: str,
    admitted: Callable[[dict[str, Any]], bool] = lambda meta: True,
    k1: float = 1.2,
    b: float = 0.75,
) -> dict[int, float]:
    """id -> BM25 score of every admitted item holding a query word (float64)."""
    docs = {
        i: Counter(w for f in fields for w in words(field_text(meta.get(f)))) for i, meta in items.items()
    }
    n = len(docs)
    if n == 0:
        return {}
    lengths = {i: sum(c.values()) for i, c in docs.items()}
    avgdl = sum(lengths.values()) / n
    q = Counter(words(query))
    out: dict[int, float] = {}
    for term, count in q.items():
        df = sum(1 for c in docs.values() if term in c)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, c in docs.items():
            tf = c.get(term, 0)
            if tf and admitted(items[i]):
                norm = k1 * (1 - b + b * lengths[i] / avgdl)
                out[i] = out.get(i, 0.0) + count * idf * tf * (k1 + 1) / (tf + norm)
    return out


def check_text_search(
    expected: Sequence[dict[int, float]], k: int, scores: np.ndarray, ids: np.ndarray, rtol: float = 1e-4
) -> None:
    """``search_text`` results [n, k] against the reference scores of each query (ties in any order)."""
    n = len(expected)
    assert scores.shape == ids.shape == (n, k), (scores.shape, ids.shape, (n, k))
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    for r, want in enumerate(expected):
        m = min(k, len(want))
        got = ids[r, :m]
        assert (ids[r, m:] == -1).all() and np.isneginf(scores[r, m:]).all(), (
            f"query {r}: {m} items hold its words, the rest must be padding: {ids[r].tolist()}"
        )
        assert (got >= 0).all() and np.unique(got).size == m, f"query {r}: ids {got.tolist()}"
        assert all(int(i) in want for i in got), (
            f"query {r}: ids {[int(i) for i in got if int(i) not in want]} hold no query word or are filtered out"
        )
        own = np.array([want[int(i)] for i in got])
        np.testing.assert_allclose(scores[r, :m], own, rtol=rtol, atol=1e-6, err_msg=f"query {r}: scores")
        top = np.sort(np.fromiter(want.values(), dtype=np.float64))[::-1][:m]
        np.testing.assert_allclose(own, top, rtol=rtol, atol=1e-6, err_msg=f"query {r}: the top-{m} scores")
        assert (np.diff(scores[r, :m]) <= 1e-6).all(), f"query {r}: best first"
