"""Words and how often each occurs, read by SQLite FTS5's own tokenizer (``unicode61``, ``porter``).

Documents are inserted into a temporary in-memory FTS5 table declared with the collection's
tokenizer, and read back through an ``fts5vocab`` table of type ``instance``: one row per
(term, document, column, position). Grouped, that is the postings of the batch: which documents
hold which term how often, per column. Queries go through the same path as one-column documents,
so a query word and an indexed word are the same term exactly when FTS5 says so ("Café" and
"cafe"; "running" and "run" with porter). Query text is read as words only: FTS5's query syntax
(``AND``, ``NOT``, quotes, ``column:``) has no effect, so no query can fail to parse.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_QUERY_TERMS", "TermCounts", "query_terms", "term_counts"]

MAX_QUERY_TERMS = 256  # distinct words one query may hold (each costs a lookup per segment and field)

_local = threading.local()


@dataclass(frozen=True)
class TermCounts:
    """Postings of a batch of documents, sorted by (column, term, document)."""

    cols: np.ndarray  # int64 [m] column (field position) of each entry
    terms: np.ndarray  # object [m] the term (str)
    docs: np.ndarray  # int64 [m] document number (row within the batch)
    counts: np.ndarray  # int64 [m] occurrences of the term in that document and column
    lengths: np.ndarray  # int64 [columns, docs] tokens per document and column

    def groups(self) -> list[tuple[int, str, int, int]]:
        """(column, term, start, stop) of each run of one (column, term) in the sorted entries."""
        m = self.terms.shape[0]
        if m == 0:
            return []
        change = np.ones(m, dtype=bool)
        change[1:] = (self.cols[1:] != self.cols[:-1]) | (self.terms[1:] != self.terms[:-1])
        starts = np.flatnonzero(change)
        stops = np.append(starts[1:], m)
        return [(int(self.cols[s]), str(self.terms[s]), int(s), int(e)) for s, e in zip(starts, stops)]


def _names(columns: int) -> str:
    """Column names that sort like their numbers (c00, c01, ...): the SQL below orders by them."""
    return ", ".join(f"c{i:02d}" for i in range(columns))


def _connection(tokenizer: str, columns: int) -> sqlite3.Connection:
    """This thread's in-memory database with an empty FTS5 table of ``columns`` columns."""
    cache: dict[tuple[str, int], sqlite3.Connection] = getattr(_local, "cache", None) or {}
    _local.cache = cache
    con = cache.get((tokenizer, columns))
    if con is None:
        con = sqlite3.connect(":memory:")
        cols = _names(columns)
        quoted = tokenizer.replace("'", "''")
        con.execute(f"CREATE VIRTUAL TABLE docs USING fts5({cols}, tokenize='{quoted}')")
        con.execute("CREATE VIRTUAL TABLE words USING fts5vocab(docs, 'instance')")
        cache[(tokenizer, columns)] = con
    return con


def term_counts(columns: Sequence[Sequence[str]], tokenizer: str) -> TermCounts:
    """Postings of documents given column by column (``columns[c][d]``: text of document ``d`` in
    column ``c``), read by FTS5 with ``tokenizer``."""
    n_cols = len(columns)
    n_docs = len(columns[0]) if n_cols else 0
    lengths = np.zeros((n_cols, n_docs), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    if n_docs == 0:
        return TermCounts(empty, np.zeros(0, dtype=object), empty, empty, lengths)
    con = _connection(tokenizer, n_cols)
    marks = ", ".join("?" * (n_cols + 1))
    try:
        with con:
            con.executemany(
                f"INSERT INTO docs(rowid, {_names(n_cols)}) VALUES ({marks})",
                ((d, *(col[d] for col in columns)) for d in range(n_docs)),
            )
        rows = con.execute(
            "SELECT col, term, doc, count(*) FROM words GROUP BY col, term, doc ORDER BY col, term, doc"
        ).fetchall()
    finally:
        with con:
            con.execute("DELETE FROM docs")
    if not rows:
        return TermCounts(empty, np.zeros(0, dtype=object), empty, empty, lengths)
    col_names, terms, docs, counts = zip(*rows)
    cols = np.fromiter((int(c[1:]) for c in col_names), dtype=np.int64, count=len(rows))
    docs_a = np.asarray(docs, dtype=np.int64)
    counts_a = np.asarray(counts, dtype=np.int64)
    np.add.at(lengths, (cols, docs_a), counts_a)
    term_array = np.empty(len(terms), dtype=object)
    term_array[:] = terms
    return TermCounts(cols, term_array, docs_a, counts_a, lengths)


def query_terms(queries: Sequence[str], tokenizer: str) -> list[dict[str, int]]:
    """The terms of each query, with how often each occurs in it (FTS5 counts a repeated word twice)."""
    counts = term_counts([list(queries)], tokenizer)
    out: list[dict[str, int]] = [{} for _ in queries]
    for term, doc, n in zip(counts.terms.tolist(), counts.docs.tolist(), counts.counts.tolist()):
        out[doc][term] = int(n)
    for text, terms in zip(queries, out):
        if len(terms) > MAX_QUERY_TERMS:
            raise ValueError(
                f"a text query holds {len(terms)} distinct words, at most {MAX_QUERY_TERMS} are searched: "
                f"shorten it (it starts {text[:60]!r})"
            )
    return out
