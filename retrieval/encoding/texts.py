"""Captions in, unit vectors (or tower features) out: the next batches tokenized in a helper thread,
the tower run by torch or ONNX Runtime (:mod:`retrieval.encoding.towers`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from retrieval.encoding import towers
from retrieval.encoding.batches import (
    TEXT_BATCH_SIZE,
    Encoded,
    black_box,
    check_batch_size,
    gather,
    progress_bar,
    unit,
)
from retrieval.encoding.runtime import inference, prefetch


def _tokenized(model: Any, texts: Sequence[str], batch_size: int) -> Iterator[tuple[int, int, Any]]:
    starts = range(0, len(texts), batch_size)
    tokenized: Iterator[tuple[int, int, Any]] = (
        (start, len(chunk), model.tokenize(chunk))
        for start in starts
        for chunk in [list(texts[start : start + batch_size])]
    )
    return prefetch(tokenized) if len(starts) > 1 else tokenized


def _check_texts(texts: Any, what: str) -> None:
    if isinstance(texts, str):
        raise ValueError(
            f"{what} expects a list of strings, received one string {texts[:40]!r}: wrap it in [...]"
        )


def text_feature_batches(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    runtime: str | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch whose ``vectors`` are the text tower's outputs ``[b, F]``
    (float32 CPU, before the head) for a model whose head runs apart from its tower; the tower runs
    on ``runtime`` (None: the model's ``runtime``, else torch)."""
    _check_texts(texts, "encode_text_features")
    check_batch_size(batch_size)
    tower = towers.tower_of(model, "text")
    if tower is None:
        raise ValueError(
            f"{type(model).__name__} has no text tower whose head runs apart from it: use encode_texts"
        )
    with inference(model, device) as target:
        runner = towers.tower_runner(model, "text", runtime, target)
        tokenized = _tokenized(model, texts, batch_size)
        try:
            for start, n, tokens in tokenized:
                input_ids = tokens["input_ids"]  # [b, L]
                mask = tokens.get("attention_mask")
                mask = torch.ones_like(input_ids) if mask is None else mask  # [b, L]
                if runner is not None:
                    features = runner(input_ids, mask)  # [b, F]
                else:
                    with torch.inference_mode():
                        features = tower(input_ids.to(target), mask.to(target)).float().cpu()  # [b, F]
                    features = features.clone()  # a plain tensor again, outside inference mode
                yield Encoded(features, list(range(start, start + n)), [])
        finally:
            if hasattr(tokenized, "close"):
                tokenized.close()


def text_batches(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    runtime: str | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``texts``, in order; the next batches are tokenized in a
    helper thread while the current one runs its forward pass. A model whose head runs apart from its
    tower (a :class:`~retrieval.model.TwinEncoder`) runs the tower on ``runtime`` (None: the model's
    ``runtime``, else torch) and the head on torch."""
    _check_texts(texts, "encode_texts")
    check_batch_size(batch_size)
    if not (hasattr(model, "tokenize") and hasattr(model, "text_features")):
        yield from black_box(model, model.encode_texts, texts, batch_size, device, False)
        return
    if towers.tower_of(model, "text") is not None:
        features = text_feature_batches(model, texts, batch_size=batch_size, device=device, runtime=runtime)
        with inference(model, device):
            for encoded in features:
                with torch.inference_mode():
                    vectors = model.project_text(encoded.vectors)  # [b, D]
                yield Encoded(unit(vectors.clone()), encoded.positions, [])
        return
    tokenized = _tokenized(model, texts, batch_size)
    with inference(model, device) as target:
        try:
            for start, n, tokens in tokenized:
                on_device = {k: v.to(target) if hasattr(v, "to") else v for k, v in tokens.items()}
                with torch.inference_mode():
                    features = model.text_features(on_device)  # [b, D]
                yield Encoded(unit(features), list(range(start, start + n)), [])
        finally:
            if hasattr(tokenized, "close"):
                tokenized.close()


def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
    runtime: str | None = None,
) -> Encoded:
    """All of ``texts`` encoded (:func:`text_batches` gathered): ``vectors [n, D]``."""
    batches = text_batches(model, texts, batch_size=batch_size, device=device, runtime=runtime)
    return gather(model, progress_bar(batches, progress, len(texts), batch_size, "texts"))


def encode_text_features(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
    runtime: str | None = None,
) -> Encoded:
    """All of ``texts`` through the text tower alone: ``vectors [n, F]`` are tower features, what
    ``model.project_text`` turns into unit vectors."""
    batches = text_feature_batches(model, texts, batch_size=batch_size, device=device, runtime=runtime)
    parts = list(progress_bar(batches, progress, len(texts), batch_size, "texts"))
    if not parts:
        dim = int(getattr(model.text_tower, "output_dim", 0))
        return Encoded(torch.empty((0, dim)), [], [])
    return Encoded(torch.cat([p.vectors for p in parts]), [i for p in parts for i in p.positions], [])
