"""Query a collection with a twin encoder: text->image, image->text, image->image, text->text.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.search.searcher` -- :class:`Searcher` (a model paired with the collection it
  embedded) and :class:`Hit`.
* :mod:`~retrieval.search.queries` -- checks of text queries, image queries and raw query vectors.
* :mod:`~retrieval.search.oneshot` -- :func:`search_collection`: load the model, open the
  collection and query it in one call.
"""

from __future__ import annotations

from retrieval.search.oneshot import search_collection
from retrieval.search.searcher import Hit, Searcher

__all__ = ["Hit", "Searcher", "search_collection"]
