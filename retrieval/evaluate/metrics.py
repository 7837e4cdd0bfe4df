"""Retrieval metrics: pure functions on a score matrix (or on embeddings, in chunks).

The ground truth is many-to-one: ``text_to_image[t]`` is the index of caption
``t``'s image, so an image may have several captions (or none).

Directions
    * ``t2i``: each text queries all images; exactly one image is relevant.
    * ``i2t``: each image queries all texts; its captions are relevant. Images
      without a caption have nothing to find and are left out of ``i2t`` averages
      (``i2t/n_queries`` says how many images were scored).

Ranks and ties (pessimistic policy)
    The rank of a relevant item with score ``s`` is
    ``(its position among the query's relevant items by decreasing score)
    + (number of NON-relevant candidates whose score is >= s)``.
    A tie with a non-relevant item therefore counts against the model, so a model
    that gives every candidate the same score gets the worst rank, not the best
    (an optimistic policy would give it R@1 = 1). Ties among relevant items do not
    change any metric. Ranks are 1-based.

Metrics (each averaged over queries; ``r_1 < r_2 < ... < r_m`` are the ranks of a
query's ``m`` relevant items)
    * ``R@K`` recall as a hit rate, as in CLIP (Radford et al., 2021) and
      CLIP_benchmark: 1 if ``r_1 <= K`` (t2i: the caption's image is in the top K;
      i2t: at least one of the image's captions is).
    * ``i2t/true_R@K``: the fraction of relevant items retrieved,
      ``|{i: r_i <= K}| / m`` (for t2i it equals ``R@K`` and is not repeated).
    * ``MRR``: mean reciprocal rank, ``1 / r_1``.
    * ``mAP@K``: ``AP@K = sum_{i: r_i <= K} (i / r_i) / min(m, K)``, so a perfect
      ranking scores 1 whatever ``m`` is.
    * ``nDCG@K`` with binary relevance (Järvelin & Kekäläinen, 2002):
      ``sum_{i: r_i <= K} 1/log2(r_i + 1)`` divided by its ideal value
      ``sum_{j=1}^{min(m, K)} 1/log2(j + 1)``.
    * ``median_rank``, ``mean_rank``: of ``r_1``.

``K`` larger than the number of candidates is allowed (every query then hits).

Chunked scoring (:func:`retrieval_metrics_from_embeddings`) computes scores block
by block in float32; a pair's own score and the scores it is compared with may
come from different matrix products, so two scores that differ only by rounding
(about 1e-7) can be ordered either way. Exact ties (duplicate vectors, exactly
representable products, a given score matrix) follow the policy above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retrieval.encoding import pick_device
from retrieval.evaluate._ranking import Ranking, rank_both

__all__ = [
    "Ranking",
    "ranking_metrics",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_rankings",
    "retrieval_rankings_from_embeddings",
]


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a numpy array or torch tensor, received {type(x).__name__}"
        ) from exc


def _float_tensor(x: Any, name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, received dtype {t.dtype}")
    return t.double()  # integers: exact in float64


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must be positive integers, received {list(ks)!r}")
        out.append(int(k))
    if not out:
        raise ValueError("ks is empty: pass at least one cutoff, e.g. ks=(1, 5, 10)")
    return tuple(sorted(set(out)))


def _check_targets(text_to_image: Any, n_texts: int, n_images: int, device: torch.device) -> torch.Tensor:
    g = _as_tensor(text_to_image, "text_to_image")
    if g.ndim != 1 or g.shape[0] != n_texts:
        raise ValueError(
            f"text_to_image has shape {tuple(g.shape)}, expected ({n_texts},): one image index per text"
        )
    if g.is_floating_point():
        if not bool(torch.all(g == torch.round(g))):
            raise ValueError("text_to_image must hold integer image indices, received non-integer floats")
    elif g.dtype == torch.bool or g.is_complex():
        raise ValueError(f"text_to_image must hold integer image indices, received dtype {g.dtype}")
    g = g.to(torch.int64)
    if n_texts and (int(g.min()) < 0 or int(g.max()) >= n_images):
        bad = int(torch.nonzero((g < 0) | (g >= n_images))[0, 0])
        raise ValueError(
            f"text_to_image[{bad}] = {int(g[bad])} is out of range: expected an image index in "
            f"[0, {n_images}) (there are {n_images} images)"
        )
    return g.to(device)


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} contain NaN or infinite values (first at index {where}); "
            "expected finite numbers: check the model outputs or the score matrix"
        )


def _check_sizes(n_texts: int, n_images: int) -> None:
    if n_texts == 0 or n_images == 0:
        raise ValueError(
            f"cannot evaluate retrieval on {n_texts} texts x {n_images} images: "
            "need at least one text and one image"
        )


def retrieval_rankings(
    scores: Any, text_to_image: Any, *, chunk_size: int = 4096, top_n: int = 0
) -> tuple[Ranking, Ranking]:
    """Ranks of the relevant items in both directions, from a dense score matrix.

    Args:
        scores: ``[n_texts, n_images]`` similarities (numpy or torch; higher is better).
        text_to_image: ``[n_texts]`` index of each text's image.
        chunk_size: queries (and candidates) handled per block.
        top_n: also keep each query's ``top_n`` best candidates (for reports).

    Returns:
        ``(t2i, i2t)`` :class:`Ranking` objects.
    """
    s = _float_tensor(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores has shape {tuple(s.shape)}, expected [n_texts, n_images]")
    n_texts, n_images = s.shape
    _check_sizes(n_texts, n_images)
    g = _check_targets(text_to_image, n_texts, n_images, s.device)
    chunk_size = _check_chunk(chunk_size)
    _check_finite(s, "scores")

    def block(ts: slice, images: torch.Tensor | slice) -> torch.Tensor:
        return s[ts][:, images]  # [b_t, b_i] view or gather

    t2i, i2t = rank_both(
        block, n_texts, n_images, g, chunk_size, pair_scores=lambda t, i: s[t, i], top_n=top_n
    )
    assert t2i is not None and i2t is not None
    return t2i, i2t


def _check_chunk(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, received {chunk_size!r}")
    return int(chunk_size)


def retrieval_rankings_from_embeddings(
    text_emb: Any,
    image_emb: Any,
    text_to_image: Any,
    *,
    chunk_size: int = 4096,
    top_n: int = 0,
    device: str | torch.device | None = None,
) -> tuple[Ranking, Ranking]:
    """Like :func:`retrieval_rankings` with ``scores = text_emb @ image_emb.T``, never built whole.

    Scores are computed in ``chunk_size x chunk_size`` blocks on ``device`` (CUDA
    when available, else CPU), so memory stays ``O(chunk_size^2 + (T + I) * D)``.
    """
    te = _float_tensor(text_emb, "text_emb")
    ie = _float_tensor(image_emb, "image_emb")
    if te.ndim != 2 or ie.ndim != 2:
        raise ValueError(
            f"text_emb and image_emb must be 2-D [n, dim], received {tuple(te.shape)} and {tuple(ie.shape)}"
        )
    if te.shape[1] != ie.shape[1]:
        raise ValueError(
            f"text_emb has dim {te.shape[1]} but image_emb has dim {ie.shape[1]}: "
            "encode both with the same model"
        )
    _check_sizes(te.shape[0], ie.shape[0])
    chunk_size = _check_chunk(chunk_size)
    dev = pick_device(device)
    dtype = torch.promote_types(te.dtype, ie.dtype)
    te, ie = te.to(dev, dtype), ie.to(dev, dtype)
    g = _check_targets(text_to_image, te.shape[0], ie.shape[0], dev)
    t2i, i2t = embedding_rankings(te, ie, g, chunk_size, top_n)
    assert t2i is not None and i2t is not None
    return t2i, i2t


def embedding_rankings(
    te: torch.Tensor,
    ie: torch.Tensor,
    g: torch.Tensor,
    chunk_size: int,
    top_n: int = 0,
    *,
    t2i: bool = True,
    i2t: bool = True,
) -> tuple[Ranking | None, Ranking | None]:
    """The requested directions' :class:`Ranking` from checked tensors on one device.

    ``g[t] < 0`` marks a text whose image is not among ``ie`` (internal use: such a
    text has no relevant image, and is relevant to no image).
    """
    _check_finite(te, "text embeddings")
    _check_finite(ie, "image embeddings")

    def block(ts: slice, images: torch.Tensor | slice) -> torch.Tensor:
        return te[ts] @ ie[images].T  # [b_t, b_i]

    with torch.inference_mode():
        return rank_both(block, len(te), len(ie), g, chunk_size, top_n=top_n, t2i=t2i, i2t=i2t)


def ranking_metrics(
    ranking: Ranking, ks: Sequence[int] = (1, 5, 10), prefix: str = "", *, true_recall: bool = False
) -> dict[str, float]:
    """Metrics of one direction from its :class:`Ranking` (definitions in the module docstring).

    Keys are ``{prefix}R@K``, ``{prefix}true_R@K`` (when ``true_recall``; it
    equals ``R@K`` when every query has one relevant item), ``{prefix}mAP@K``,
    ``{prefix}nDCG@K``, ``{prefix}MRR``, ``{prefix}median_rank``,
    ``{prefix}mean_rank`` and ``{prefix}n_queries``. Queries without a relevant
    item are left out.
    """
    ks = _check_ks(ks)
    q, r = ranking.pair_query, ranking.pair_rank.astype(np.float64)
    n_rel = ranking.n_relevant  # [Q]
    scored = n_rel > 0
    n_scored = int(scored.sum())
    out: dict[str, float] = {}
    if n_scored == 0:
        raise ValueError("no query has a relevant item: nothing to evaluate")
    first = ranking.first_rank[scored].astype(np.float64)  # [Q']
    # 1-based position of each pair among its query's relevant items
    starts = np.concatenate([[0], np.cumsum(n_rel)[:-1]])
    pos = np.arange(len(q)) - starts[q] + 1.0
    for k in ks:
        hit = r <= k
        out[f"{prefix}R@{k}"] = float(np.mean(first <= k))
        if true_recall:
            found = np.bincount(q, weights=hit, minlength=ranking.n_queries)[scored]
            out[f"{prefix}true_R@{k}"] = float(np.mean(found / n_rel[scored]))
        ap = np.bincount(q, weights=hit * pos / r, minlength=ranking.n_queries)[scored]
        out[f"{prefix}mAP@{k}"] = float(np.mean(ap / np.minimum(n_rel[scored], k)))
        dcg = np.bincount(q, weights=hit / np.log2(r + 1.0), minlength=ranking.n_queries)[scored]
        ideal_table = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))  # [k] IDCG for 1..k relevant items
        idcg = ideal_table[np.minimum(n_rel[scored], k) - 1]
        out[f"{prefix}nDCG@{k}"] = float(np.mean(dcg / idcg))
    out[f"{prefix}MRR"] = float(np.mean(1.0 / first))
    out[f"{prefix}median_rank"] = float(np.median(first))
    out[f"{prefix}mean_rank"] = float(np.mean(first))
    out[f"{prefix}n_queries"] = float(n_scored)
    return out


def _metrics_both(t2i: Ranking, i2t: Ranking, ks: Sequence[int]) -> dict[str, float]:
    return {**ranking_metrics(t2i, ks, "t2i/"), **ranking_metrics(i2t, ks, "i2t/", true_recall=True)}


def retrieval_metrics(scores: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text-to-image and image-to-text retrieval metrics from a score matrix.

    Args:
        scores: ``[n_texts, n_images]`` similarities, numpy or torch, higher is
            better; must be finite.
        text_to_image: ``[n_texts]`` integer index of each text's image
            (several texts may share an image; an image may have none).
        ks: cutoffs for ``R@K``, ``true_R@K``, ``mAP@K`` and ``nDCG@K``.

    Returns:
        A flat dict: ``t2i/R@K``, ``i2t/R@K``, ``i2t/true_R@K``, ``{t2i,i2t}/mAP@K``,
        ``{t2i,i2t}/nDCG@K``, ``{t2i,i2t}/MRR``, ``{t2i,i2t}/median_rank``,
        ``{t2i,i2t}/mean_rank``, ``{t2i,i2t}/n_queries``. Definitions and the
        (pessimistic) tie policy are in :mod:`retrieval.evaluate.metrics`.

    Raises:
        ValueError: empty inputs, a shape mismatch, an out-of-range
            ``text_to_image`` entry or non-finite scores.

    Example (three captions, two images; caption 2 ranks its image second)::

        >>> import numpy as np
        >>> scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
        >>> m = retrieval_metrics(scores, [0, 1, 1], ks=(1, 2))
        >>> round(m["t2i/R@1"], 4), m["t2i/R@2"], round(m["t2i/MRR"], 4)
        (0.6667, 1.0, 0.8333)
        >>> m["i2t/R@1"], m["i2t/true_R@1"], m["i2t/mean_rank"]
        (1.0, 0.75, 1.0)
        >>> retrieval_metrics(np.ones((2, 2)), [0, 1], ks=(1,))["t2i/R@1"]  # ties count against
        0.0
    """
    t2i, i2t = retrieval_rankings(scores, text_to_image)
    return _metrics_both(t2i, i2t, ks)


def retrieval_metrics_from_embeddings(
    text_emb: Any,
    image_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
    *,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """:func:`retrieval_metrics` of ``text_emb @ image_emb.T`` computed in chunks.

    The ``[n_texts, n_images]`` matrix is never materialised: scores are computed
    in ``chunk_size x chunk_size`` blocks (t2i chunks over texts, i2t over images),
    so a 100k x 100k evaluation needs a few hundred MB, not 40 GB. Pass
    L2-normalised embeddings for cosine similarity.

    Example::

        >>> import numpy as np
        >>> text = np.eye(3, dtype=np.float32)
        >>> image = np.eye(3, dtype=np.float32)[[0, 2]]  # image 0 = text 0, image 1 = text 2
        >>> m = retrieval_metrics_from_embeddings(text, image, [0, 0, 1], ks=(1,), chunk_size=2)
        >>> m["t2i/R@1"], m["i2t/R@1"]  # text 1 ties at 0 with both images: pessimistic rank 2
        (0.6666666666666666, 1.0)
    """
    t2i, i2t = retrieval_rankings_from_embeddings(
        text_emb, image_emb, text_to_image, chunk_size=chunk_size, device=device
    )
    return _metrics_both(t2i, i2t, ks)
