"""Two-stage retrieval measured: the dense top-N of every query re-ranked by a match head.

For each query the ``n`` best candidates by cosine are re-ordered by the head's match
probability; candidates beyond ``n`` keep their dense ranks. The first relevant item's new
rank gives ``rerank/{t2i,i2t}/R@K`` and ``rerank/.../MRR`` (comparable with the dense
``t2i/R@K``), ``rerank/ms_per_query`` is the head's added time per query, and the probabilities
of the re-ranked (query, candidate) pairs against their relevance give the head's calibration
on hard pairs (``match/ECE`` and a reliability table). :func:`rerank_metrics` scores with a pooled
:class:`~retrieval.match.MatchHead` (vectors), :func:`cross_rerank_metrics` with a
:class:`~retrieval.match_cross.CrossMatchHead` (grid and token features).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from retrieval.evaluate._ranking import Ranking
from retrieval.match import calibration_bins, expected_calibration_error
from retrieval.match_cross import CrossFeatures, CrossMatchHead, cross_scores

__all__ = ["cross_rerank_metrics", "rerank_metrics"]


def _top(queries: torch.Tensor, candidates: torch.Tensor, n: int, chunk: int = 1024) -> np.ndarray:
    """``[Q, n]`` int64 best candidates of each query by inner product."""
    parts = []
    for q0 in range(0, len(queries), chunk):
        scores = queries[q0 : q0 + chunk] @ candidates.T  # [b, C]
        parts.append(torch.topk(scores, min(n, candidates.shape[0]), dim=1).indices)
    return torch.cat(parts).cpu().numpy().astype(np.int64)


Scorer = Callable[[np.ndarray], np.ndarray]  # candidate rows [Q, n] -> match probabilities [Q, n]


def _direction(
    score: Scorer,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: Any,
    dense: Ranking,
    n: int,
    ks: Sequence[int],
    prefix: str,
) -> tuple[dict[str, float], np.ndarray, np.ndarray, float]:
    top = _top(queries, candidates, n)  # [Q, n']
    t0 = time.perf_counter()
    probs = score(top)  # [Q, n']
    seconds = time.perf_counter() - t0
    order = np.argsort(-probs, axis=1, kind="stable")  # [Q, n']
    is_relevant = relevant(top)  # [Q, n'] bool
    reranked = np.take_along_axis(is_relevant, order, 1)
    has = dense.n_relevant > 0  # [Q]
    found = reranked.any(1)
    first = np.where(found, reranked.argmax(1) + 1, np.maximum(dense.first_rank, top.shape[1] + 1))  # [Q]
    first = first[has].astype(np.float64)
    out = {f"{prefix}R@{k}": float((first <= k).mean()) for k in ks}
    out[f"{prefix}MRR"] = float((1.0 / first).mean())
    return out, probs.reshape(-1), is_relevant.reshape(-1), seconds


def _rerank(
    t2i_score: Scorer,
    i2t_score: Scorer,
    texts: torch.Tensor,
    images: torch.Tensor,
    text_to_image: np.ndarray,
    t2i: Ranking,
    i2t: Ranking,
    ks: Sequence[int],
    n: int,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    g = np.asarray(text_to_image, dtype=np.int64)
    t_out, t_p, t_y, t_s = _direction(
        t2i_score, texts, images, lambda top: top == g[:, None], t2i, n, ks, "rerank/t2i/"
    )
    own = np.arange(len(images))[:, None]
    i_out, i_p, i_y, i_s = _direction(
        i2t_score, images, texts, lambda top: g[top] == own, i2t, n, ks, "rerank/i2t/"
    )
    probs, labels = np.concatenate([t_p, i_p]), np.concatenate([t_y, i_y]).astype(np.float64)
    metrics = {**t_out, **i_out}
    metrics["rerank/n"] = float(n)
    metrics["rerank/ms_per_query"] = 1000.0 * (t_s + i_s) / max(1, len(texts) + len(images))
    metrics["match/ECE"] = expected_calibration_error(probs, labels)
    metrics["match/positive_rate"] = float(labels.mean()) if len(labels) else float("nan")
    return metrics, calibration_bins(probs, labels)


def rerank_metrics(
    head: Any,
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_to_image: np.ndarray,
    t2i: Ranking,
    i2t: Ranking,
    ks: Sequence[int],
    n: int,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """``(metrics, reliability bins)`` of re-ranking each query's dense top ``n`` with ``head`` (module docstring)."""
    texts = text_emb.detach().cpu().float()  # [T, D]
    images = image_emb.detach().cpu().float()  # [I, D]

    def pooled(queries: torch.Tensor, candidates: torch.Tensor, query_is_text: bool) -> Scorer:
        def score(top: np.ndarray) -> np.ndarray:
            q_rows = np.repeat(np.arange(len(top)), top.shape[1])  # [Q * n']
            q, c = queries[q_rows].numpy(), candidates[top.reshape(-1)].numpy()
            probs = head.probabilities(c, q) if query_is_text else head.probabilities(q, c)
            return probs.reshape(top.shape)  # [Q, n']

        return score

    return _rerank(
        pooled(texts, images, True),
        pooled(images, texts, False),
        texts,
        images,
        text_to_image,
        t2i,
        i2t,
        ks,
        n,
    )


def cross_rerank_metrics(
    head: CrossMatchHead,
    features: CrossFeatures,
    t2i: Ranking,
    i2t: Ranking,
    ks: Sequence[int],
    n: int,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """As :func:`rerank_metrics`, with a :class:`~retrieval.match_cross.CrossMatchHead` scoring each
    query's dense top ``n`` from ``features`` (grid of the candidate images, tokens of the candidate
    captions; the dense order comes from their unit vectors). ``rerank/ms_per_query`` includes
    gathering the candidates' features."""
    texts, images = torch.from_numpy(features.text_vecs), torch.from_numpy(features.image_vecs)
    return _rerank(
        lambda top: cross_scores(head, features, top, query_is_text=True),
        lambda top: cross_scores(head, features, top, query_is_text=False),
        texts,
        images,
        features.text_to_image,
        t2i,
        i2t,
        ks,
        n,
    )
