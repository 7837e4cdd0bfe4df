"""BM25 over every part of a collection, with statistics of the whole collection.

The score of an item for a query is BM25 (Robertson and Zaragoza, "The Probabilistic Relevance
Framework: BM25 and Beyond", 2009) as Lucene and Elasticsearch compute it, the searched fields read
as one text::

    score(D, Q) = sum over query terms t (a repeated word counts again) of
                  idf(t) * tf(t, D) * (k1 + 1) / (tf(t, D) + k1 * (1 - b + b * |D| / avgdl))
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))

SQLite FTS5's ``bm25()`` computes the same sum with ``idf(t) = ln((N - n(t) + 0.5) / (n(t) + 0.5))``,
floored at 1e-6: a word held by half the items or more then counts for almost nothing, and in a
small collection every word does. The Lucene form is positive for every word, so scores stay
meaningful at any size; for one word the two differ by a constant factor (same ranking).

``tf(t, D)``: occurrences of t in D's searched fields; ``|D|``: D's tokens in them; ``N``: live
items; ``n(t)``: live items holding t in a searched field; ``avgdl``: mean ``|D|`` over live items.

FTS5 computes these statistics per table; here ``N``, ``n(t)`` and ``avgdl`` are summed over all
segments and the buffer and count live items only (removed rows are left out as soon as they are
removed, not when a merge drops them). So a score depends on the live items alone, never on how
they are cut into segments: saving, merging, compacting or reopening changes no score. Filters
(``where``) choose which items come back, not the statistics. Only items holding at least one
query term are returned (OR semantics, ranked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexes.lexical.store import Lexicon

__all__ = ["PartText", "bm25_search", "idf"]


def idf(n_live: int, df: int) -> float:
    """Inverse document frequency of a word held by ``df`` of ``n_live`` items (the Lucene form)."""
    return math.log(1.0 + (n_live - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class PartText:
    """One part as BM25 reads it: its lexicon, ids, removed rows and the rows a filter admits."""

    lexicon: Lexicon
    ids: np.ndarray  # int64 [rows]
    live: np.ndarray | None  # bool [rows], None when no row is removed
    allowed: np.ndarray | None  # bool [rows] admitted by the filter, None without filter


def _postings(part: PartText, fields: Sequence[int], term: str) -> tuple[np.ndarray, np.ndarray]:
    """(live rows ascending, tf summed over ``fields``) of ``term`` in one part."""
    rows_parts, tf_parts = [], []
    for f in fields:
        rows, tfs = part.lexicon.postings(f, term)
        if rows.size:
            rows_parts.append(rows)
            tf_parts.append(tfs)
    if not rows_parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(rows_parts) == 1:
        rows, tfs = rows_parts[0], tf_parts[0]
    else:  # the union of the fields' rows: counts summed per row (a pass over the rows, no sort)
        summed = np.bincount(
            np.concatenate(rows_parts), weights=np.concatenate(tf_parts), minlength=part.ids.shape[0]
        )
        rows = np.flatnonzero(summed)
        tfs = summed[rows].astype(np.int64)
    if part.live is not None:
        keep = part.live[rows]
        rows, tfs = rows[keep], tfs[keep]
    return rows, tfs


def _doc_lengths(part: PartText, fields: Sequence[int]) -> np.ndarray:
    """int64 [rows] tokens of each row in the searched fields."""
    lens = part.lexicon.lengths(fields[0])
    for f in fields[1:]:
        lens = lens + part.lexicon.lengths(f)
    return lens


def bm25_search(
    parts: Sequence[PartText],
    queries: Sequence[dict[str, int]],
    fields: Sequence[int],
    k: int,
    k1: float,
    b: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores float32 [n, k], ids int64 [n, k]) by BM25 for each query's {term: count}; rows
    padded with -inf / -1 past the items holding a query term. Ties: smaller id first."""
    n = len(queries)
    scores_out = np.full((n, k), -np.inf, dtype=np.float32)
    ids_out = np.full((n, k), -1, dtype=np.int64)
    n_live = sum(int(p.ids.shape[0] if p.live is None else p.live.sum()) for p in parts)
    if n_live == 0 or not parts:
        return scores_out, ids_out
    lengths = [_doc_lengths(p, fields) for p in parts]
    total = sum(int(lens.sum() if p.live is None else lens[p.live].sum()) for p, lens in zip(parts, lengths))
    avgdl = total / n_live
    if avgdl <= 0:
        return scores_out, ids_out  # no item has a word in these fields
    for qi, terms in enumerate(queries):
        if not terms:
            continue
        found = [[_postings(p, fields, t) for t in terms] for p in parts]  # [part][term] (rows, tfs)
        weights = []
        for ti, count in enumerate(terms.values()):
            df = sum(int(found[pi][ti][0].size) for pi in range(len(parts)))
            weights.append(count * idf(n_live, df))
        cand_scores, cand_ids = [], []
        for pi, part in enumerate(parts):
            rows_list = [found[pi][ti][0] for ti in range(len(weights))]
            if not any(r.size for r in rows_list):
                continue
            rows = np.concatenate(rows_list)
            tfs = np.concatenate([found[pi][ti][1] for ti in range(len(weights))]).astype(np.float64)
            w = np.concatenate([np.full(r.size, weights[ti]) for ti, r in enumerate(rows_list)])
            norm = k1 * (1.0 - b + b * lengths[pi][rows] / avgdl)
            contrib = w * tfs * (k1 + 1.0) / (tfs + norm)  # > 0: every idf is
            if rows.size * 8 < part.ids.shape[0]:  # few matches: sort them
                uniq, inverse = np.unique(rows, return_inverse=True)
                sums = np.bincount(inverse, weights=contrib)
            else:  # many: one pass over the part's rows
                dense = np.bincount(rows, weights=contrib, minlength=part.ids.shape[0])
                uniq = np.flatnonzero(dense)
                sums = dense[uniq]
            if part.allowed is not None:
                keep = part.allowed[uniq]
                uniq, sums = uniq[keep], sums[keep]
            if uniq.size > k:
                top = np.argpartition(-sums, k - 1)[:k]
                # keep every row tied with the k-th score: the smaller ids among them win below
                kth = sums[top].min()
                top = np.flatnonzero(sums >= kth)
                uniq, sums = uniq[top], sums[top]
            cand_scores.append(sums)
            cand_ids.append(np.asarray(part.ids)[uniq])
        if not cand_scores:
            continue
        s = np.concatenate(cand_scores)
        i = np.concatenate(cand_ids)
        order = np.lexsort((i, -s))[:k]
        scores_out[qi, : order.size] = s[order]
        ids_out[qi, : order.size] = i[order]
    return scores_out, ids_out
