"""Evaluate a twin encoder on a set of pairs: encode, rank, measure, optionally compare an index."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from indexes.fingerprint import check_fingerprint
from retrieval import encoding
from retrieval.config import EvalConfig
from retrieval.evaluate.index_eval import compare_index
from retrieval.evaluate.metrics import _check_ks, ranking_metrics, retrieval_rankings_from_embeddings
from retrieval.evaluate.result import EvalResult
from retrieval.evaluate.zeroshot import ZeroShotResult, zero_shot_from_labels

__all__ = ["evaluate_model"]


def _image_labels(pairs: Any, column: str) -> dict[str, Any]:
    """Label of each image (from its first pair carrying one)."""
    labels: dict[str, Any] = {}
    for pair in pairs:
        value = (pair.metadata or {}).get(column)
        if value not in (None, "") and pair.image_id not in labels:
            labels[pair.image_id] = value
    if not labels:
        fields = sorted({key for pair in pairs for key in (pair.metadata or {})})
        raise ValueError(
            f"no pair has a label in metadata column {column!r}; available metadata fields: {fields}"
        )
    return labels


@dataclasses.dataclass
class _Encoded:
    """The evaluated set after encoding: broken images (and their captions) removed."""

    images: list[str]
    image_keys: list[str]
    captions: list[str]
    text_to_image: np.ndarray  # [T]
    image_emb: torch.Tensor  # [I, D]
    text_emb: torch.Tensor  # [T, D]
    skipped: list[tuple[str, str]]


def _encode_pairs(model: Any, pairs: Any, batch_size: int, config: EvalConfig) -> _Encoded:
    images, image_keys = pairs.images(), pairs.image_ids()
    captions, g = pairs.captions(), pairs.text_to_image()
    encoded = encoding.encode_images(
        model,
        images,
        batch_size=batch_size,
        device=config.device,
        skip_broken=True,
        progress=config.progress,
        runtime=config.runtime,
        feature_cache=config.feature_cache,
    )
    if not encoded.positions:
        first = encoded.skipped[0].detail if encoded.skipped else "?"
        raise ValueError(f"none of the {len(images)} images could be encoded; first error: {first}")
    image_emb, kept = encoded.vectors, encoded.positions  # [I', D]
    skipped = [(s.item, f"image could not be encoded: {s.detail}") for s in encoded.skipped]
    if len(kept) < len(images):
        new_index = np.full(len(images), -1, dtype=np.int64)
        new_index[kept] = np.arange(len(kept))
        keep_text = new_index[g] >= 0
        skipped.extend(
            (f"caption {t}", "its image could not be encoded") for t in np.nonzero(~keep_text)[0].tolist()
        )
        images, image_keys = [images[i] for i in kept], [image_keys[i] for i in kept]
        captions = [c for c, k in zip(captions, keep_text) if k]
        g = new_index[g[keep_text]]
    text_emb = encoding.encode_texts(
        model,
        captions,
        batch_size=batch_size,
        device=config.device,
        progress=config.progress,
        runtime=config.runtime,
        feature_cache=config.feature_cache,
    ).vectors  # [T, D]
    return _Encoded(
        list(images), list(image_keys), list(captions), np.asarray(g, np.int64), image_emb, text_emb, skipped
    )


def _zero_shot(
    model: Any, pairs: Any, enc: _Encoded, config: EvalConfig, batch_size: int
) -> tuple[ZeroShotResult, np.ndarray]:
    """Zero-shot classification of the encoded images that have a label; adds the others to ``enc.skipped``."""
    assert config.zero_shot_label_column is not None
    labels = _image_labels(pairs, config.zero_shot_label_column)
    keys = enc.image_keys
    chosen = np.array([i for i, key in enumerate(keys) if key in labels], dtype=np.int64)
    enc.skipped.extend(
        (enc.images[i], "no zero-shot label") for i, key in enumerate(keys) if key not in labels
    )
    result = zero_shot_from_labels(
        model, enc.image_emb[chosen], [labels[keys[i]] for i in chosen], config.templates,
        ks=(1, 5), batch_size=batch_size,
    )  # fmt: skip
    return result, chosen


def _bank_metrics(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    g: np.ndarray,
    ks: Sequence[int],
    config: EvalConfig,
    query_bank: Any,
    *,
    expand: bool,
) -> dict[str, float]:
    """Both directions ranked with the query bank, exactly over all candidates: hubness-corrected
    scores ``s - penalty[candidate]`` (``hub/`` keys), or with ``expand`` the queries expanded first
    (:mod:`retrieval.search.expansion`) and then corrected when ``config.hubness`` is set (``exp/``).

    A penalty on the candidate is one more coordinate: ``[q, 1] . [c, -p] = s - p``.
    """
    from retrieval.search.expansion import Expansion, expand_queries
    from retrieval.search.hubness import Hubness, item_penalties

    texts = text_emb.detach().cpu().float()  # [T, D] candidates of image queries
    pics = image_emb.detach().cpu().float()  # [I, D] candidates of text queries
    text_q, image_q = texts, pics  # the queries
    if expand:
        how = Expansion(config.expansion_k, config.expansion_weight, config.expansion_temperature)
        text_q = torch.from_numpy(expand_queries(texts.numpy(), query_bank, "text", how))
        image_q = torch.from_numpy(expand_queries(pics.numpy(), query_bank, "image", how))
    p_img, p_txt = torch.zeros(len(pics)), torch.zeros(len(texts))
    if config.hubness:
        hub = Hubness(config.hubness, beta=config.hubness_beta, k=config.hubness_k)
        p_img = torch.from_numpy(item_penalties(query_bank.for_queries("text"), pics.numpy(), hub))  # [I]
        p_txt = torch.from_numpy(item_penalties(query_bank.for_queries("image"), texts.numpy(), hub))  # [T]
    t2i, _ = retrieval_rankings_from_embeddings(
        torch.cat([text_q, torch.ones(len(texts), 1)], 1),
        torch.cat([pics, -p_img[:, None]], 1),
        g,
        chunk_size=config.chunk_size,
    )
    _, i2t = retrieval_rankings_from_embeddings(
        torch.cat([texts, -p_txt[:, None]], 1),
        torch.cat([image_q, torch.ones(len(pics), 1)], 1),
        g,
        chunk_size=config.chunk_size,
    )
    prefix = "exp/" if expand else "hub/"
    return {
        **ranking_metrics(t2i, ks, f"{prefix}t2i/"),
        **ranking_metrics(i2t, ks, f"{prefix}i2t/", true_recall=True),
    }


def evaluate_model(
    model: Any,
    pairs: Any,
    *,
    ks: Sequence[int] | None = None,
    batch_size: int | None = None,
    collection: Any = None,
    config: EvalConfig | None = None,
    query_bank: Any = None,
    match_head: Any = None,
) -> EvalResult:
    """Encode the images and captions of ``pairs`` with ``model`` and measure retrieval both ways.

    Args:
        model: a :class:`retrieval.model.TwinEncoder`, or anything :mod:`retrieval.encoding`
            encodes with (its features methods, or ``encode_images`` / ``encode_texts``
            returning ``[N, D]`` unit vectors), and optionally ``fingerprint()``.
        pairs: a :class:`retrieval.data.PairSet`; captions of an image are all relevant to it.
        ks: cutoffs of the ``@K`` metrics (default ``config.ks``).
        batch_size: encoding batch size (default ``config.batch_size``).
        collection: an open ``indexes.Collection`` holding this set's images (and
            texts) made by ``model``: adds exact vs index metrics (``index/...`` keys).
        config: the remaining settings (:class:`retrieval.config.EvalConfig`).
        query_bank: a :class:`retrieval.search.QueryBank` of queries from outside this set (e.g.
            the training split); with ``config.hubness``, the rankings are also measured after
            query-bank normalisation over all candidates (``hub/t2i/...``, ``hub/i2t/...`` keys); with
            ``config.expansion`` (a bank with pairs), also with the queries expanded through the bank
            (and then corrected, with ``config.hubness``: ``exp/...`` keys).
        match_head: a :class:`retrieval.match.MatchHead` (default: the one attached to ``model``);
            with ``config.rerank = N``, each query's dense top-N is re-ranked by it (``rerank/...``
            keys, the added time per query, and its calibration: ``match/ECE`` and ``calibration``).

    With ``config.hybrid_fields`` (and a collection with a text index), text-to-image is also measured
    through the collection by the dense arm, BM25 over those fields of the image items, and their
    fusion (``dense/t2i/R@K``, ``lexical/t2i/R@K``, ``hybrid/t2i/R@K``; ``config.tune_hybrid`` chooses
    the fusion on a validation share of the captions: :mod:`retrieval.evaluate.hybrid_eval`).

    Images that cannot be decoded are skipped with their captions and listed in ``skipped``.
    Writing the report is a step of its own on the result: :func:`retrieval.evaluate.write_report`.
    """
    config = config or EvalConfig()
    ks = _check_ks(config.ks if ks is None else ks)
    batch_size = config.batch_size if batch_size is None else batch_size
    if len(pairs) == 0:
        raise ValueError(
            "the pair set is empty: nothing to evaluate (check the data source and its skipped list)"
        )
    fingerprint = model.fingerprint() if hasattr(model, "fingerprint") else None
    if collection is not None:
        check_fingerprint(
            collection.fingerprint or None,
            fingerprint or None,
            what=f"collection {collection.path}",
            fix="evaluate with the model that built it, or re-embed the collection",
        )
    if config.expansion:  # a bank that cannot expand fails before the encoding, not after
        if query_bank is None:
            raise ValueError(
                "EvalConfig.expansion needs a query bank of training pairs: pass query_bank= (e.g. "
                "retrieval.search.build_query_bank on the training split)"
            )
        from retrieval.search.expansion import expansion_pairs

        expansion_pairs(query_bank, "text")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    enc = _encode_pairs(model, pairs, batch_size, config)
    seconds["encode"] = time.perf_counter() - t0
    images, image_keys, captions, g = enc.images, enc.image_keys, enc.captions, enc.text_to_image
    image_emb, text_emb, skipped = enc.image_emb, enc.text_emb, enc.skipped

    t0 = time.perf_counter()
    t2i, i2t = retrieval_rankings_from_embeddings(
        text_emb, image_emb, g, chunk_size=config.chunk_size, top_n=config.top_n, device=config.device
    )
    metrics = {**ranking_metrics(t2i, ks, "t2i/"), **ranking_metrics(i2t, ks, "i2t/", true_recall=True)}
    seconds["rank"] = time.perf_counter() - t0

    if config.hubness:
        if query_bank is None:
            raise ValueError(
                f"EvalConfig.hubness={config.hubness!r} needs a query bank: pass query_bank= (queries from "
                "outside the evaluated set, e.g. retrieval.search.build_query_bank on the training split)"
            )
        t0 = time.perf_counter()
        metrics.update(_bank_metrics(text_emb, image_emb, g, ks, config, query_bank, expand=False))
        seconds["hubness"] = time.perf_counter() - t0
    if config.expansion:
        t0 = time.perf_counter()
        metrics.update(_bank_metrics(text_emb, image_emb, g, ks, config, query_bank, expand=True))
        seconds["expansion"] = time.perf_counter() - t0

    calibration = None
    if config.rerank:
        head = match_head if match_head is not None else getattr(model, "match_head", None)
        if head is None:
            raise ValueError(
                f"EvalConfig.rerank={config.rerank} needs a match head: train one (retrieval.match."
                "train_match_head) and attach it to the model, or pass match_head="
            )
        from retrieval.evaluate.rerank_eval import rerank_metrics

        t0 = time.perf_counter()
        extra, calibration = rerank_metrics(head, text_emb, image_emb, g, t2i, i2t, ks, int(config.rerank))
        metrics.update(extra)
        seconds["rerank"] = time.perf_counter() - t0

    index = None
    if collection is not None:
        t0 = time.perf_counter()
        index = compare_index(
            collection, text_emb, image_emb, image_keys, g, ks,
            key_field=config.key_field, refine=config.refine, filter_mode=config.index_filter,
            chunk_size=config.chunk_size,
        )  # fmt: skip
        metrics.update({f"index/{key}": value for key, value in index.index.items()})
        seconds["index"] = time.perf_counter() - t0

    hybrid = None
    if config.hybrid_fields:
        if collection is None:
            raise ValueError(
                "EvalConfig.hybrid_fields needs a collection (--collection) whose image items carry those text fields"
            )
        from retrieval.evaluate.hybrid_eval import compare_hybrid
        from retrieval.search.hybrid import Hybrid

        t0 = time.perf_counter()
        settings = Hybrid(
            fields=None if list(config.hybrid_fields) == ["all"] else tuple(config.hybrid_fields),
            fusion=config.fusion,
            k=config.rrf_k,
            alpha=config.alpha,
            candidates=config.hybrid_candidates,
        )
        hybrid = compare_hybrid(
            collection, text_emb, captions, image_keys, g, ks,
            hybrid=settings, key_field=config.key_field, refine=config.refine,
            tune=config.tune_hybrid, validation_share=config.tune_share, seed=config.seed,
        )  # fmt: skip
        metrics.update(hybrid.metrics)
        seconds["hybrid"] = time.perf_counter() - t0

    zero_shot, zs_images = None, None
    if config.zero_shot_label_column:
        t0 = time.perf_counter()
        zero_shot, zs_images = _zero_shot(model, pairs, enc, config, batch_size)
        metrics.update(zero_shot.metrics())
        seconds["zero_shot"] = time.perf_counter() - t0

    return EvalResult(
        metrics=metrics,
        ks=ks,
        t2i=t2i,
        i2t=i2t,
        images=images,
        image_keys=image_keys,
        captions=captions,
        text_to_image=g,
        index=index,
        zero_shot=zero_shot,
        zero_shot_images=zs_images,
        skipped=skipped,
        fingerprint=fingerprint,
        seconds=seconds,
        model_info=_model_info(model),
        calibration=calibration,
        hybrid=hybrid,
        image_vectors=image_emb.detach().cpu().float().numpy(),
    )


def _model_info(model: Any) -> dict[str, Any] | None:
    """Where a model loaded by name came from (its ``source``), for the report."""
    source = getattr(model, "source", None)
    return source.info() if source is not None and hasattr(source, "info") else None
