"""Corpus tools: near-duplicates, pair scores and filtering, subsets by query, leakage between
splits, a map of the space.

People embed corpora to clean and shape them, not only to search them. This package's
``__init__`` is its public API; the modules behind it, one concept each:

* :mod:`~retrieval.corpus.dedup` -- :func:`find_duplicates`: groups of near-duplicates in a
  collection, written out, removed, or their rate estimated from a sample.
* :mod:`~retrieval.corpus.scores` -- :func:`score_pairs`: the image-caption cosine of every pair of a
  corpus, streamed and resumable, and the corpus filtered by it.
* :mod:`~retrieval.corpus.export` -- :func:`export_subset`: the items of a collection matching
  queries, copied with their media and captions into a dataset the toolkit reads back.
* :mod:`~retrieval.corpus.leakage` -- :func:`check_leakage`: test images with near-duplicates in the
  training data, and recall with them left out.
* :mod:`~retrieval.corpus.map` -- :func:`draw_map`: a 2-D map of a collection as a self-contained
  HTML page and a PNG.

Under them: :mod:`~retrieval.corpus.neighbours` (range search on a k-NN index, exact references),
:mod:`~retrieval.corpus.components` (union-find and greedy grouping in bounded memory),
:mod:`~retrieval.corpus.selection` (which items), :mod:`~retrieval.corpus.media` (the bytes behind
an item), :mod:`~retrieval.corpus.columns` (typed Parquet columns from metadata),
:mod:`~retrieval.corpus.config` (settings).
"""

from __future__ import annotations

import importlib
from typing import Any

from retrieval.corpus.config import DedupConfig, ExportConfig, LeakageConfig, MapConfig, ScoreConfig
from retrieval.corpus.selection import EmptyCollectionError

__all__ = [
    "DedupConfig",
    "DedupResult",
    "EmptyCollectionError",
    "ExportConfig",
    "LeakageConfig",
    "MapConfig",
    "ScoreConfig",
    "check_leakage",
    "draw_map",
    "export_subset",
    "find_duplicates",
    "score_pairs",
]

# name -> module: imported on first use (the tools pull in torch, pyarrow or matplotlib)
_LAZY = {
    "DedupResult": "retrieval.corpus.dedup",
    "find_duplicates": "retrieval.corpus.dedup",
    "score_pairs": "retrieval.corpus.scores",
    "export_subset": "retrieval.corpus.export",
    "check_leakage": "retrieval.corpus.leakage",
    "draw_map": "retrieval.corpus.map",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retrieval.corpus' has no attribute {name!r}")
