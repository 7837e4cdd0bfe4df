"""Block-wise ranking engine shared by the dense and the chunked metric entry points.

Given a way to compute a block of scores ``[texts, images]`` and the relation
"text ``t`` belongs to image ``text_to_image[t]``", it returns, for every relevant
pair and in both directions, the 1-based rank of the relevant item in its query's
ranking, under the pessimistic tie policy of :mod:`retrieval.evaluate.metrics`.
One sweep over ``chunk_size x chunk_size`` blocks serves both directions; no
larger piece of the score matrix ever exists.
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


def _sort_pairs_by_score(
    pq: torch.Tensor, pc: torch.Tensor, scores: torch.Tensor, ptr: torch.Tensor, p0: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs grouped by query, each group ordered by decreasing score; also each pair's 0-based position."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_query = torch.sort(pq[by_score], stable=True).indices
    perm = by_score[by_query]
    pq, pc, scores = pq[perm], pc[perm], scores[perm]
    pos = torch.arange(len(pq), device=pq.device) - (ptr[pq] - p0)  # [p]
    return pq, pc, scores, pos


def rank_both(
    block: BlockFn,
    n_texts: int,
    n_images: int,
    text_to_image: torch.Tensor,
    chunk_size: int,
    *,
    pair_scores: PairFn | None = None,
    top_n: int = 0,
    t2i: bool = True,
    i2t: bool = True,
) -> tuple[Ranking | None, Ranking | None]:
    """Rank every relevant pair in both directions with one sweep over score blocks.

    ``block(text_slice, images)`` returns the ``[b_t, b_i]`` scores of a contiguous
    range of texts against a slice or an index tensor of images; each block serves
    both directions (t2i counts along its rows, i2t along its columns), so the
    scores are computed once. ``pair_scores(t, i)``, when given, returns the scores
    of individual pairs (cheap for a dense matrix); otherwise they are read from
    blocks. A relevant item is never counted against itself: it is taken back out
    using the block's own score. Scores must be finite (callers check).
    ``text_to_image[t] < 0`` marks a text without an image among the candidates.
    """
    g = text_to_image  # [T] int64, on the scoring device
    device = g.device
    texts = torch.arange(n_texts, device=device)
    matched = g >= 0  # [T]

    # 1. the score of every relevant pair (the thresholds of both directions)
    pair = None  # [T] score of (t, g[t]); +inf for unmatched texts, which then never count
    for t0 in range(0, n_texts, chunk_size):
        t1 = min(t0 + chunk_size, n_texts)
        tq = texts[t0:t1][matched[t0:t1]]
        ti = g[tq]
        scores = pair_scores(tq, ti) if pair_scores is not None else _pair_scores_from_blocks(
            block, slice(t0, t1), tq, ti, chunk_size
        )  # fmt: skip
        if pair is None:
            pair = torch.full((n_texts,), float("inf"), dtype=scores.dtype, device=device)
        pair[tq] = scores
    assert pair is not None

    # i2t pairs grouped by image
    order = torch.sort(g, stable=True).indices
    order = order[matched[order]]
    i2t_q, i2t_c = g[order], texts[order]  # [P] image, text
    ptr = torch.zeros(n_images + 1, dtype=torch.int64, device=device)
    ptr[1:] = torch.cumsum(torch.bincount(i2t_q, minlength=n_images), 0)
    ptr_cpu = ptr.cpu()

    t2i_counts = torch.zeros(n_texts, dtype=torch.int64, device=device)  # scores >= the text's pair score
    t2i_top: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # text chunk start -> running top
    out_q, out_c, out_r, out_ids, out_scores = [], [], [], [], []
    for i0 in range(0, n_images, chunk_size):
        i1 = min(i0 + chunk_size, n_images)
        p0, p1 = int(ptr_cpu[i0]), int(ptr_cpu[i1])
        cq, cc, cs, pos = _sort_pairs_by_score(i2t_q[p0:p1], i2t_c[p0:p1], pair[i2t_c[p0:p1]], ptr, p0)
        m_max = int(pos.max()) + 1 if p1 > p0 else 0
        thresholds = torch.full((i1 - i0, max(m_max, 1)), float("inf"), dtype=pair.dtype, device=device)
        thresholds[cq - i0, pos] = cs  # [b_i, m] captions' scores, best first; +inf padding never counts
        counts = torch.zeros_like(thresholds, dtype=torch.int64)
        top_s = top_i = None
        for t0 in range(0, n_texts, chunk_size):
            t1 = min(t0 + chunk_size, n_texts)
            s = block(slice(t0, t1), slice(i0, i1))  # [b_t, b_i]
            if t2i:
                thr = pair[t0:t1]  # [b_t]
                t2i_counts[t0:t1] += (s >= thr[:, None]).sum(1)
                own_t = texts[t0:t1][(g[t0:t1] >= i0) & (g[t0:t1] < i1)]  # texts whose image is in this block
                own = s[own_t - t0, g[own_t] - i0]
                t2i_counts[own_t] -= (own >= pair[own_t]).to(torch.int64)
                if top_n > 0:
                    prev = t2i_top.get(t0)
                    t2i_top[t0] = _merge_top(prev, s, torch.arange(i0, i1, device=device), top_n)
            if i2t:
                _count_at_least(s.T, thresholds, m_max, counts)  # [b_i, b_t] view
                inside = (cc >= t0) & (cc < t1)  # chunk pairs whose caption is in this block
                rows = cq[inside] - i0  # [r]
                own = s[cc[inside] - t0, rows]  # [r]
                counts.index_add_(0, rows, -(own[:, None] >= thresholds[rows]).to(torch.int64))  # [r, m]
                if top_n > 0:
                    prev = (top_s, top_i) if top_s is not None else None
                    top_s, top_i = _merge_top(prev, s.T, torch.arange(t0, t1, device=device), top_n)
        if i2t:
            out_q.append(cq)
            out_c.append(cc)
            out_r.append(pos + 1 + counts[cq - i0, pos])  # [p] pessimistic 1-based ranks
            if top_n > 0:
                out_ids.append(top_i)
                out_scores.append(top_s)

    def cat(parts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(parts).cpu().numpy() if parts else np.zeros(0, dtype=np.int64)

    t2i_ranking = i2t_ranking = None
    if t2i:
        tq = texts[matched]
        tops = [t2i_top[t0] for t0 in sorted(t2i_top)]
        t2i_ranking = Ranking(
            n_queries=n_texts,
            n_candidates=n_images,
            pair_query=tq.cpu().numpy(),
            pair_candidate=g[matched].cpu().numpy(),
            pair_rank=(1 + t2i_counts[matched]).cpu().numpy(),
            top_ids=cat([t[1] for t in tops]) if top_n > 0 else None,
            top_scores=cat([t[0] for t in tops]) if top_n > 0 else None,
        )
    if i2t:
        i2t_ranking = Ranking(
            n_queries=n_images,
            n_candidates=n_texts,
            pair_query=cat(out_q),
            pair_candidate=cat(out_c),
            pair_rank=cat(out_r),
            top_ids=cat(out_ids) if top_n > 0 else None,
            top_scores=cat(out_scores) if top_n > 0 else None,
        )
    return t2i_ranking, i2t_ranking


def _count_at_least(s: torch.Tensor, thresholds: torch.Tensor, m_max: int, counts: torch.Tensor) -> None:
    """``counts[i, j] += #{c: s[i, c] >= thresholds[i, j]}`` for ``j < m_max`` (in place)."""
    if m_max <= LOOP_MAX_RELEVANT:
        for j in range(m_max):
            counts[:, j] += (s >= thresholds[:, j : j + 1]).sum(1)
        return
    s = s.contiguous()  # [b, c] (a transposed view is copied once)
    asc, perm = torch.sort(thresholds, dim=1)  # [b, m] ascending (+inf padding last)
    below = torch.searchsorted(asc, s, right=True)  # [b, c] thresholds <= each score
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
    prev: tuple[torch.Tensor, torch.Tensor] | None, s: torch.Tensor, cand: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``top_n`` (scores, ids) over candidate blocks; ``s`` is ``[b, c]``."""
    ids = cand[None, :].expand(s.shape[0], -1)  # [b, c]
    if prev is not None:
        s = torch.cat([prev[0], s], 1)
        ids = torch.cat([prev[1], ids], 1)
    k = min(top_n, s.shape[1])
    best_s, idx = torch.topk(s, k, dim=1)  # [b, k]
    return best_s, torch.gather(ids, 1, idx)
