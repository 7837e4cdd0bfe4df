"""Hybrid search: the words of a text query matched lexically (BM25), fused with the shared embedding space.

Two arms answer a text query: the dense arm (the query's embedding searched in the collection, with
the searcher's hubness correction and re-ranking when it has them) and the lexical arm (BM25 over
the items' indexed text fields: :meth:`indexes.Collection.search_text`). Both take the same
filters: the modality of the wanted items (a text->image query searches the image items' text
fields, text->text the captions') and any ``where``. Each arm gives its best ``candidates`` items;
the fusion ranks the union:

* ``"rrf"`` -- reciprocal rank fusion (Cormack, Clarke and Büttcher, "Reciprocal Rank Fusion
  outperforms Condorcet and individual Rank Learning Methods", SIGIR 2009):
  ``score(d) = sum over arms of 1 / (k + rank(d))``, ranks from 1, an arm that did not return
  ``d`` adding nothing. Scores are not needed, only ranks; ``k`` (default 60, the paper's) damps
  the weight of the very first ranks.
* ``"weighted"`` -- a convex combination of scores normalised per query and arm over the arm's
  list (min-max: the best becomes 1, the worst of the list 0; a list of equal scores all 1):
  ``score(d) = alpha * dense(d) + (1 - alpha) * lexical(d)``, 0 for an arm that did not return
  ``d`` (Bruch, Gai and Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023).
* ``"lexical"`` -- the lexical arm alone (BM25 scores); no model is needed.

Ties keep the order of the better rank in either arm, then the smaller id. :func:`fuse_rrf` and
:func:`fuse_weighted` are the maths alone, on ``[n, c]`` arrays with ``-1`` padding, FAISS-style.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["FUSIONS", "Fused", "Hybrid", "fuse_rrf", "fuse_weighted", "hybrid_search"]

FUSIONS = ("rrf", "weighted", "lexical")


@dataclasses.dataclass(frozen=True)
class Hybrid:
    """How text queries are answered by both arms (see the module docstring)."""

    fields: tuple[str, ...] | None = None  # indexed text fields the lexical arm searches (None: all)
    fusion: str = "rrf"  # "rrf" | "weighted" | "lexical" (the lexical arm alone)
    k: int = 60  # RRF's rank constant
    alpha: float = 0.5  # "weighted": share of the dense arm (1 - alpha: the lexical arm)
    candidates: int = 100  # items each arm gives the fusion (at least the k asked for)

    def __post_init__(self) -> None:
        if self.fields is not None:
            fields = self.fields
            if isinstance(fields, str):
                fields = tuple(f.strip() for f in fields.split(",") if f.strip())
            if (
                not isinstance(fields, (list, tuple))
                or not fields
                or not all(isinstance(f, str) and f for f in fields)
            ):
                raise ValueError(
                    f"Hybrid.fields must name text fields (e.g. ('title', 'tags')) or be None, received {self.fields!r}"
                )
            object.__setattr__(self, "fields", tuple(fields))
        if self.fusion not in FUSIONS:
            raise ValueError(f"Hybrid.fusion must be one of {list(FUSIONS)}, received {self.fusion!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 0:
            raise ValueError(f"Hybrid.k (RRF's rank constant) must be an int >= 0, received {self.k!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or not 0.0 <= self.alpha <= 1.0
        ):
            raise ValueError(f"Hybrid.alpha must be a number in [0, 1], received {self.alpha!r}")
        if (
            isinstance(self.candidates, bool)
            or not isinstance(self.candidates, (int, np.integer))
            or self.candidates < 1
        ):
            raise ValueError(f"Hybrid.candidates must be an int >= 1, received {self.candidates!r}")
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "candidates", int(self.candidates))

    @property
    def scoring(self) -> str:
        """What the hit scores are: ``"rrf"``, ``"weighted"`` or ``"bm25"``."""
        return "bm25" if self.fusion == "lexical" else self.fusion

    def as_dict(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields) if self.fields else None,
            "fusion": self.fusion,
            "k": self.k,
            "alpha": self.alpha,
            "candidates": self.candidates,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Hybrid:
        """From :meth:`as_dict` output (or a JSON body); unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hybrid setting(s) {unknown}; expected some of {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("fields"), list):
            values["fields"] = tuple(values["fields"])
        return cls(**values)


# ---------------------------------------------------------------------------------------------- maths
def _ranks(ids: np.ndarray) -> list[dict[int, int]]:
    """Per row, id -> rank (1-based) of each valid id (the first occurrence)."""
    out = []
    for row in ids:
        ranks: dict[int, int] = {}
        for pos, i in enumerate(row.tolist()):
            if i >= 0 and i not in ranks:
                ranks[i] = pos + 1
        out.append(ranks)
    return out


def _finish(rows: list[list[tuple[float, int, int]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [n, k], ids int64 [n, k]) from per-row (score, best rank, id), best first."""
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        row.sort(key=lambda t: (-t[0], t[1], t[2]))
        for c, (s, _, i) in enumerate(row[:k]):
            scores[r, c], ids[r, c] = s, i
    return scores, ids


def fuse_rrf(arms: Sequence[np.ndarray], k: int, rank_constant: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of ranked id lists ``arms`` (each int64 [n, c], -1 padding).

    Returns the best ``k`` of the union per row: (scores float32 [n, k], ids int64 [n, k]).

    >>> s, i = fuse_rrf([np.array([[7, 3, -1]]), np.array([[3, 9, 7]])], k=3, rank_constant=1)
    >>> i.tolist(), [round(float(x), 4) for x in s[0]]
    ([[3, 7, 9]], [0.8333, 0.75, 0.3333])
    """
    n = arms[0].shape[0] if arms else 0
    ranked = [_ranks(np.asarray(a)) for a in arms]
    rows = []
    for r in range(n):
        scores: dict[int, float] = {}
        best: dict[int, int] = {}
        for arm in ranked:
            for i, rank in arm[r].items():
                scores[i] = scores.get(i, 0.0) + 1.0 / (rank_constant + rank)
                best[i] = min(best.get(i, rank), rank)
        rows.append([(s, best[i], i) for i, s in scores.items()])
    return _finish(rows, k)


def _minmax(scores: np.ndarray, ids: np.ndarray) -> dict[int, float]:
    """id -> score normalised over the row's valid entries (best 1, worst 0; all equal: 1)."""
    valid = ids >= 0
    if not valid.any():
        return {}
    s = scores[valid].astype(np.float64)
    lo, hi = float(s.min()), float(s.max())
    norm = np.ones_like(s) if hi - lo <= 0 else (s - lo) / (hi - lo)
    out: dict[int, float] = {}
    for i, v in zip(ids[valid].tolist(), norm.tolist()):
        out.setdefault(i, v)
    return out


def fuse_weighted(
    dense: tuple[np.ndarray, np.ndarray], lexical: tuple[np.ndarray, np.ndarray], k: int, alpha: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``alpha * dense + (1 - alpha) * lexical`` of min-max normalised scores; each arm is
    (scores [n, c], ids [n, c]) best first with -1 padding. Returns (scores float32 [n, k], ids [n, k]).

    >>> d = (np.array([[0.9, 0.5, 0.1]]), np.array([[1, 2, 3]]))
    >>> l = (np.array([[8.0, 4.0]]), np.array([[3, 2]]))
    >>> s, i = fuse_weighted(d, l, k=3, alpha=0.5)
    >>> i.tolist(), [round(float(x), 3) for x in s[0]]
    ([[1, 3, 2]], [0.5, 0.5, 0.25])
    """
    d_scores, d_ids = (np.asarray(a) for a in dense)
    l_scores, l_ids = (np.asarray(a) for a in lexical)
    d_ranks, l_ranks = _ranks(d_ids), _ranks(l_ids)
    rows = []
    for r in range(d_ids.shape[0]):
        dn = _minmax(d_scores[r], d_ids[r])
        ln = _minmax(l_scores[r], l_ids[r])
        row = []
        for i in set(dn) | set(ln):
            score = alpha * dn.get(i, 0.0) + (1.0 - alpha) * ln.get(i, 0.0)
            best = min(d_ranks[r].get(i, 1 << 30), l_ranks[r].get(i, 1 << 30))
            row.append((score, best, i))
        rows.append(row)
    return _finish(rows, k)


# ---------------------------------------------------------------------------------------------- searching
def _item_scores(collection: Any, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[n, k] the collection's similarity of each query row with the items ``ids`` [n, k] (NaN for -1)."""
    out = np.full(ids.shape, np.nan, dtype=np.float32)
    valid = ids >= 0
    if not valid.any():
        return out
    unique, inverse = np.unique(ids[valid], return_inverse=True)
    items = np.asarray(collection.vectors(unique), dtype=np.float32)[inverse]  # [m, D]
    rows = np.nonzero(valid)[0]
    q = queries[rows]  # [m, D]
    if str(getattr(collection, "metric", "ip")) == "l2":
        sims = -((q - items) ** 2).sum(axis=1)
    else:
        sims = (q * items).sum(axis=1)
    out[valid] = sims
    return out


def _lookup(ids: np.ndarray, arm_ids: np.ndarray, arm_scores: np.ndarray) -> np.ndarray:
    """[n, k] the score each id of ``ids`` has in its row of an arm (NaN where the arm did not return it)."""
    out = np.full(ids.shape, np.nan, dtype=np.float32)
    for r in range(ids.shape[0]):
        found = dict(zip(arm_ids[r].tolist(), arm_scores[r].tolist()))
        out[r] = [found.get(int(i), np.nan) for i in ids[r]]
    return out


def _dense_arm(
    searcher: Any,
    queries: np.ndarray,
    wide: int,
    modality: str | None,
    where: Mapping[str, Any] | None,
    refine: int | None,
    filters: dict[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [n, c], ids [n, c], index similarity [n, c]) of the dense arm: the collection's search, or
    the searcher's expanded, corrected and re-ranked hits when it expands queries, corrects hubness or
    re-ranks."""
    if searcher.hubness is None and not searcher.rerank and searcher.expansion is None:
        scores, ids = searcher.collection.search(queries, wide, where=filters, refine=refine)  # [n, c]
        return scores, ids, np.where(ids >= 0, scores, np.nan).astype(np.float32)
    hits = searcher.search_vectors(
        queries, wide, modality=modality, where=where, refine=refine, query_modality="text"
    )
    ids = np.full((len(queries), wide), -1, dtype=np.int64)
    scores = np.full((len(queries), wide), -np.inf, dtype=np.float32)
    cos = np.full((len(queries), wide), np.nan, dtype=np.float32)
    for r, row in enumerate(hits):
        for c, hit in enumerate(row):
            ids[r, c], scores[r, c] = hit.id, hit.score
            cos[r, c] = np.nan if hit.cosine is None else hit.cosine
    return scores, ids, cos


@dataclasses.dataclass(frozen=True)
class Fused:
    """What :func:`hybrid_search` found for each query, best first (``-1`` / NaN padding)."""

    scores: np.ndarray  # float32 [n, k] the fused scores (BM25 for the lexical arm alone)
    ids: np.ndarray  # int64 [n, k]
    cosines: np.ndarray  # float32 [n, k] the collection's similarity of query and item (NaN: no query vector)
    lexical: np.ndarray  # float32 [n, k] the item's BM25 score (NaN: the lexical arm did not return it)


def hybrid_search(
    searcher: Any,
    texts: Sequence[str],
    vectors: np.ndarray | None,
    k: int,
    *,
    modality: str | None,
    where: Mapping[str, Any] | None,
    refine: int | None,
    hybrid: Hybrid,
) -> Fused:
    """Both arms for each text query, fused as ``hybrid`` says. ``searcher`` is a
    :class:`~retrieval.search.Searcher` (its collection, filters, encoder and dense scoring);
    ``vectors`` [n, D] are the queries' embeddings, encoded here when None and the fusion needs them."""
    collection = searcher.collection
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int; received {k!r}")
    if not hasattr(collection, "search_text"):
        raise ValueError(f"collection {collection.path} cannot search text: hybrid search needs a text index")
    texts = list(texts)
    filters = searcher._filters(modality, where)
    wide = max(int(k), hybrid.candidates)
    lex_scores, lex_ids = collection.search_text(texts, wide, where=filters, fields=hybrid.fields)  # [n, c]
    if hybrid.fusion != "lexical" and vectors is None:
        vectors = searcher.encode_texts(texts)
    cosines: np.ndarray | None = None
    if hybrid.fusion == "lexical":
        scores, ids = lex_scores[:, : int(k)], lex_ids[:, : int(k)]
        if vectors is not None:
            cosines = _item_scores(collection, np.asarray(vectors, dtype=np.float32), ids)
    else:
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.shape[0] != len(texts):
            raise ValueError(f"{queries.shape[0]} query vectors for {len(texts)} text queries")
        dense_scores, dense_ids, dense_cos = _dense_arm(
            searcher, queries, wide, modality, where, refine, filters
        )
        if hybrid.fusion == "rrf":
            scores, ids = fuse_rrf([dense_ids, lex_ids], int(k), hybrid.k)
        else:
            scores, ids = fuse_weighted(
                (dense_scores, dense_ids), (lex_scores, lex_ids), int(k), hybrid.alpha
            )
        cosines = _lookup(ids, dense_ids, dense_cos)
        missing = np.isnan(cosines) & (ids >= 0)
        if missing.any():  # found by the lexical arm alone: their similarity, read from their vectors
            cosines = np.where(
                missing, _item_scores(collection, queries, np.where(missing, ids, -1)), cosines
            )
    bm25 = _lookup(ids, lex_ids, lex_scores)
    if cosines is None:
        cosines = np.full(ids.shape, np.nan, dtype=np.float32)
    return Fused(scores, ids, cosines, bm25)
