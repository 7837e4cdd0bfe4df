"""Array helpers of the Milvus collection: result parsing and top-k merging.

Input checks come from :mod:`indexes.checks` (re-exported here), so a user sees the same message
whichever backend a location names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexes import exact
from indexes.checks import as_ids, as_vectors, check_int

__all__ = ["as_ids", "as_vectors", "check_int", "hits_to_arrays", "merge_topk"]


def hits_to_arrays(result: Any, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A Milvus search result (one hit list per query) -> (scores float32 [n, k], ids int64 [n, k]).

    Scores become higher-is-better: inner products as they are, squared L2 distances negated.
    Missing hits are id -1, score -inf.
    """
    n = len(result)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    for r, hits in enumerate(result):
        hit_ids = getattr(hits, "ids", None)
        dists = getattr(hits, "distances", None)
        if hit_ids is None or dists is None:
            hit_ids = [h["id"] for h in hits]
            dists = [h["distance"] for h in hits]
        m = min(len(hit_ids), k)
        if m:
            ids[r, :m] = np.asarray(hit_ids[:m], dtype=np.int64)
            d = np.asarray(dists[:m], dtype=np.float32)
            scores[r, :m] = d if metric == "ip" else -d
    return scores, ids


def merge_topk(
    scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of two result sets [n, a] and [n, b] per row (ties keep the first set's order)."""
    return exact.merge([(scores, ids), (more_scores, more_ids)], scores.shape[0], k)
