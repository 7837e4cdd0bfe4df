"""Captions in, unit vectors out: the next batches tokenized in a helper thread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

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


def text_batches(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``texts``, in order; the next batches are tokenized in a
    helper thread while the current one runs its forward pass."""
    if isinstance(texts, str):
        raise ValueError(
            f"encode_texts expects a list of strings, received one string {texts[:40]!r}: wrap it in [...]"
        )
    check_batch_size(batch_size)
    if not (hasattr(model, "tokenize") and hasattr(model, "text_features")):
        yield from black_box(model, model.encode_texts, texts, batch_size, device, False)
        return
    starts = range(0, len(texts), batch_size)
    tokenized: Iterator[tuple[int, int, Any]] = (
        (start, len(chunk), model.tokenize(chunk))
        for start in starts
        for chunk in [list(texts[start : start + batch_size])]
    )
    if len(starts) > 1:
        tokenized = prefetch(tokenized)
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
) -> Encoded:
    """All of ``texts`` encoded (:func:`text_batches` gathered): ``vectors [n, D]``."""
    batches = text_batches(model, texts, batch_size=batch_size, device=device)
    return gather(model, progress_bar(batches, progress, len(texts), batch_size, "texts"))
