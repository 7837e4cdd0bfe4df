"""Block-wise ranking engine shared by the dense and the chunked metric entry points.

Given a way to compute a block of scores ``[queries, candidates]`` and the
relation "text ``t`` belongs to image ``text_to_image[t]``", it returns, for every
relevant (query, candidate) pair, the 1-based rank of that candidate in the
query's ranking, under the pessimistic tie policy described in
:mod:`retrieval.evaluate.metrics`. Only ``chunk_size x chunk_size`` blocks of scores
exist at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Up to this many relevant items per query, scores are counted with one comparison pass
# per relevant item; above it, with one bucketing pass against the sorted thresholds.
LOOP_MAX_RELEVANT = 2

BlockFn = Callable[[slice, "torch.Tensor | slice"], torch.Tensor]
PairFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Ranking:
    """Where the relevant items landed, for one direction (``t2i`` or ``i2t``).

    Pairs are sorted by query, then by decreasing score (so by increasing rank).

    Attributes:
        n_queries: number of queries (texts for t2i, images for i2t).
        n_candidates: number of ranked candidates per query.
        pair_query: ``[P]`` int64, the query of each relevant pair.
        pair_candidate: ``[P]`` int64, the relevant candidate.
        pair_rank: ``[P]`` int64, its 1-based rank among all candidates of the query.
        top_ids: ``[n_queries, top_n]`` int64 best candidates (ties in arbitrary order), or ``None``.
        top_scores: ``[n_queries, top_n]`` their scores, or ``None``.
    """

    n_queries: int
    n_candidates: int
    pair_query: np.ndarray
    pair_candidate: np.ndarray
    pair_rank: np.ndarray
    top_ids: np.ndarray | None = None
    top_scores: np.ndarray | None = None

    @property
    def n_relevant(self) -> np.ndarray:
        """``[n_queries]`` number of relevant candidates of each query."""
        return np.bincount(self.pair_query, minlength=self.n_queries)

    @property
    def first_rank(self) -> np.ndarray:
        """``[n_queries]`` rank of the best relevant candidate; ``0`` for a query without one."""
        first = np.zeros(self.n_queries, dtype=np.int64)
        # pairs are sorted by (query, rank): the first pair of each query holds its best rank
        is_first = np.ones(len(self.pair_query), dtype=bool)
        is_first[1:] = self.pair_query[1:] != self.pair_query[:-1]
        first[self.pair_query[is_first]] = self.pair_rank[is_first]
        return first


def rank_pairs(
    block: BlockFn,
    n_queries: int,
    n_candidates: int,
    text_to_image: torch.Tensor,
    queries_are_texts: bool,
    chunk_size: int,
    pair_scores: PairFn | None = None,
    top_n: int = 0,
) -> Ranking:
    """Rank every relevant pair; see the module docstring. Scores must be finite (callers check).

    ``block(query_slice, candidates)`` returns the scores of a contiguous range of
    queries against a slice or an index tensor of candidates. ``pair_scores(q, c)``,
    when given, returns the scores of individual pairs (cheap for a dense matrix);
    otherwise they are read from blocks, so that a pair's score is computed the same
    way as the scores it is compared with.
    """
    g = text_to_image  # [T] int64, on the scoring device
    device = g.device
    n_texts = g.shape[0]
    texts = torch.arange(n_texts, device=device)
    matched = g >= 0  # a negative entry: the text's image is not among the images (used internally)
    if queries_are_texts:  # t2i: query t, relevant candidate g[t]
        pair_q, pair_c = texts[matched], g[matched]
    else:  # i2t: query g[t], relevant candidate t
        order = torch.sort(g, stable=True).indices
        order = order[matched[order]]
        pair_q, pair_c = g[order], texts[order]
    ptr = torch.zeros(n_queries + 1, dtype=torch.int64, device=device)
    ptr[1:] = torch.cumsum(torch.bincount(pair_q, minlength=n_queries), 0)
    ptr_cpu = ptr.cpu()

    out_q, out_c, out_r, out_ids, out_scores = [], [], [], [], []
    for q0 in range(0, n_queries, chunk_size):
        q1 = min(q0 + chunk_size, n_queries)
        qs = slice(q0, q1)
        p0, p1 = int(ptr_cpu[q0]), int(ptr_cpu[q1])
        cq, cc = pair_q[p0:p1], pair_c[p0:p1]  # [p] pairs of this chunk, grouped by query
        scores = (
            pair_scores(cq, cc)
            if pair_scores is not None
            else _pair_scores_from_blocks(block, qs, cq, cc, chunk_size)
        )
        # order the pairs of each query by decreasing score (stable two-key sort)
        by_score = torch.sort(scores, descending=True, stable=True).indices
        by_query = torch.sort(cq[by_score], stable=True).indices
        perm = by_score[by_query]
        cq, cc, scores = cq[perm], cc[perm], scores[perm]
        pos = torch.arange(p1 - p0, device=device) - (ptr[cq] - p0)  # [p] 0-based position within the query
        m_max = int(pos.max()) + 1 if p1 > p0 else 0
        thresholds = torch.full((q1 - q0, max(m_max, 1)), float("inf"), dtype=scores.dtype, device=device)
        thresholds[cq - q0, pos] = scores  # [b, m] relevant scores, +inf padding never counts
        counts = torch.zeros_like(thresholds, dtype=torch.int64)  # non-relevant scores >= each threshold
        top_s = top_i = None
        for c0 in range(0, n_candidates, chunk_size):
            c1 = min(c0 + chunk_size, n_candidates)
            s = block(qs, slice(c0, c1))  # [b, c]
            _count_at_least(s, thresholds, m_max, counts)  # every candidate, relevant ones included
            # take the relevant candidates of this block back out, using the block's own scores
            inside = (cc >= c0) & (cc < c1)  # [p]
            rows = cq[inside] - q0  # [r]
            own = s[rows, cc[inside] - c0]  # [r]
            counts.index_add_(0, rows, -(own[:, None] >= thresholds[rows]).to(torch.int64))  # [r, m]
            if top_n > 0:
                top_s, top_i = _merge_top(top_s, top_i, s, torch.arange(c0, c1, device=device), top_n)
        ranks = pos + 1 + counts[cq - q0, pos]  # [p] pessimistic 1-based ranks
        out_q.append(cq)
        out_c.append(cc)
        out_r.append(ranks)
        if top_n > 0:
            out_ids.append(top_i)
            out_scores.append(top_s)

    def cat(parts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(parts).cpu().numpy() if parts else np.zeros(0, dtype=np.int64)

    return Ranking(
        n_queries=n_queries,
        n_candidates=n_candidates,
        pair_query=cat(out_q),
        pair_candidate=cat(out_c),
        pair_rank=cat(out_r),
        top_ids=cat(out_ids) if top_n > 0 else None,
        top_scores=cat(out_scores) if top_n > 0 else None,
    )


def _count_at_least(s: torch.Tensor, thresholds: torch.Tensor, m_max: int, counts: torch.Tensor) -> None:
    """``counts[i, j] += #{c: s[i, c] >= thresholds[i, j]}`` for ``j < m_max`` (in place)."""
    if m_max <= LOOP_MAX_RELEVANT:
        for j in range(m_max):
            counts[:, j] += (s >= thresholds[:, j : j + 1]).sum(1)
        return
    asc, perm = torch.sort(thresholds, dim=1)  # [b, m] ascending (+inf padding last)
    below = torch.searchsorted(asc, s.contiguous(), right=True)  # [b, c] thresholds <= each score
    hist = torch.zeros(asc.shape[0], asc.shape[1] + 1, dtype=torch.int64, device=s.device)
    hist.scatter_add_(1, below, torch.ones_like(below))  # [b, m + 1]
    at_least = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [b, m] scores >= asc[:, j]
    counts.scatter_add_(1, perm, at_least)


def _pair_scores_from_blocks(
    block: BlockFn, qs: slice, cq: torch.Tensor, cc: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Scores of the pairs ``(cq[i], cc[i])`` (queries inside ``qs``), read from score blocks."""
    cands, inverse = torch.unique(cc, sorted=True, return_inverse=True)  # [u], [p]
    out: torch.Tensor | None = None
    for s0 in range(0, len(cands), chunk_size):
        s = block(qs, cands[s0 : s0 + chunk_size])  # [b, <=chunk]
        if out is None:
            out = torch.empty(len(cc), dtype=s.dtype, device=s.device)
        sel = (inverse >= s0) & (inverse < s0 + chunk_size)
        out[sel] = s[cq[sel] - qs.start, inverse[sel] - s0]
    assert out is not None or len(cc) == 0
    return out if out is not None else torch.zeros(0, device=cc.device)


def _merge_top(
    top_s: torch.Tensor | None, top_i: torch.Tensor | None, s: torch.Tensor, cand: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``top_n`` over candidate blocks."""
    ids = cand[None, :].expand_as(s)  # [b, c]
    if top_s is not None and top_i is not None:
        s = torch.cat([top_s, s], 1)
        ids = torch.cat([top_i, ids], 1)
    k = min(top_n, s.shape[1])
    best_s, idx = torch.topk(s, k, dim=1)  # [b, k]
    return best_s, torch.gather(ids, 1, idx)
