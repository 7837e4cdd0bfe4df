"""A slow, loop-based numpy reference for the retrieval metrics (the tests' oracle).

Independent of the library's formulation: each query's candidates are sorted by
decreasing score with non-relevant items first among equal scores (the
pessimistic tie policy), and the metrics are read off that ordering one by one.
"""

from __future__ import annotations

import math

import numpy as np


def relevant_ranks(scores_row: np.ndarray, relevant: set[int]) -> list[int]:
    is_rel = np.array([j in relevant for j in range(len(scores_row))])
    # lexsort: last key is primary -> by decreasing score, then non-relevant (0) before relevant (1)
    order = np.lexsort((is_rel.astype(int), -scores_row))
    return [pos + 1 for pos, j in enumerate(order) if is_rel[j]]


def direction_metrics(scores: np.ndarray, relevant: list[set[int]], ks, prefix: str, true_recall: bool):
    rows = [(i, relevant_ranks(scores[i], rel)) for i, rel in enumerate(relevant) if rel]
    out = {}
    for k in ks:
        out[f"{prefix}R@{k}"] = np.mean([ranks[0] <= k for _, ranks in rows])
        if true_recall:
            out[f"{prefix}true_R@{k}"] = np.mean(
                [sum(r <= k for r in ranks) / len(ranks) for _, ranks in rows]
            )
        aps, ndcgs = [], []
        for _, ranks in rows:
            ap = 0.0
            for i, r in enumerate(ranks, start=1):
                if r <= k:
                    ap += i / r
            aps.append(ap / min(len(ranks), k))
            dcg = sum(1 / math.log2(r + 1) for r in ranks if r <= k)
            idcg = sum(1 / math.log2(j + 1) for j in range(1, min(len(ranks), k) + 1))
            ndcgs.append(dcg / idcg)
        out[f"{prefix}mAP@{k}"] = np.mean(aps)
        out[f"{prefix}nDCG@{k}"] = np.mean(ndcgs)
    firsts = [ranks[0] for _, ranks in rows]
    out[f"{prefix}MRR"] = np.mean([1 / r for r in firsts])
    out[f"{prefix}median_rank"] = float(np.median(firsts))
    out[f"{prefix}mean_rank"] = float(np.mean(firsts))
    out[f"{prefix}n_queries"] = float(len(rows))
    return out


def reference_metrics(scores, text_to_image, ks=(1, 5, 10)) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    n_texts, n_images = scores.shape
    t2i_rel = [{int(text_to_image[t])} for t in range(n_texts)]
    i2t_rel = [{t for t in range(n_texts) if text_to_image[t] == i} for i in range(n_images)]
    return {
        **direction_metrics(scores, t2i_rel, ks, "t2i/", False),
        **direction_metrics(scores.T, i2t_rel, ks, "i2t/", True),
    }
