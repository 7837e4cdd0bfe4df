"""Query a collection with a twin encoder: text->image, image->text, image->image, text->text.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.search.searcher` -- :class:`Searcher` (a model paired with the collection it
  embedded) and :class:`Hit`.
* :mod:`~retrieval.search.queries` -- checks of text queries, image queries and raw query vectors.
* :mod:`~retrieval.search.hubness` -- hubness correction at query time (query-bank
  normalisation: inverted softmax / QB-Norm, CSLS) and the :class:`QueryBank` stored beside a collection.
* :mod:`~retrieval.search.expansion` -- :class:`Expansion`: cross-modal queries moved towards the
  partners of their nearest pairs in the query bank (:func:`expand_queries`).
* :mod:`~retrieval.search.penalties` -- each item's hub penalty computed once and looked up at query
  time (:class:`PenaltyTable`, :func:`precompute_penalties`), stored beside the query bank.
* :mod:`~retrieval.search.hybrid` -- :class:`Hybrid`: text queries answered by the dense arm and
  BM25 over the items' text fields, fused (reciprocal rank fusion or weighted normalised scores).
* :mod:`~retrieval.search.oneshot` -- :func:`search_collection`: load the model, open the
  collection and query it in one call.
"""

from __future__ import annotations

from retrieval.search.expansion import Expansion, expand_queries
from retrieval.search.hubness import Hubness, QueryBank, build_query_bank, query_bank_path
from retrieval.search.hybrid import Hybrid, fuse_rrf, fuse_weighted
from retrieval.search.oneshot import search_collection, search_texts
from retrieval.search.penalties import PenaltyTable, precompute_penalties
from retrieval.search.searcher import Hit, Searcher

__all__ = [
    "Expansion",
    "Hit",
    "Hubness",
    "Hybrid",
    "PenaltyTable",
    "QueryBank",
    "Searcher",
    "build_query_bank",
    "expand_queries",
    "fuse_rrf",
    "fuse_weighted",
    "precompute_penalties",
    "query_bank_path",
    "search_collection",
    "search_texts",
]
