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

SORT_WINDOW = 16  # batches of texts sorted by length together, then given back in input order


def _windows(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """The positions of each run of :data:`SORT_WINDOW` batches of ``texts``, shortest text first: a
    batch is padded to its longest text, so batches of similar lengths run far fewer padding tokens
    (1.6x the texts/s on the demo's captions, 4 to 26 tokens), while a window bounds what waits to be
    put back in order."""
    span = batch_size * SORT_WINDOW
    for start in range(0, len(texts), span):
        yield sorted(range(start, min(start + span, len(texts))), key=lambda i: len(texts[i]))


def _tokenized(model: Any, texts: Sequence[str], batch_size: int) -> Iterator[tuple[list[int], bool, Any]]:
    """``(positions, ends its window, tokens)`` per batch, in the order of :func:`_windows`; the next
    batches are tokenized in a helper thread."""

    def batches() -> Iterator[tuple[list[int], bool, Any]]:
        for order in _windows(texts, batch_size):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                yield chunk, start + batch_size >= len(order), model.tokenize([texts[i] for i in chunk])

    return prefetch(batches()) if len(texts) > batch_size else batches()


def _in_order(parts: Iterator[tuple[list[int], bool, torch.Tensor]], batch_size: int) -> Iterator[Encoded]:
    """Rows computed window by window in length order, given back as :class:`Encoded` batches of
    ``batch_size`` consecutive positions, in input order."""
    positions: list[int] = []
    rows: list[torch.Tensor] = []
    for chunk, last, vectors in parts:
        positions += chunk
        rows.append(vectors)
        if not last:
            continue
        window = torch.cat(rows)  # [W, F] in length order
        first = min(positions)
        inverse = torch.empty(len(positions), dtype=torch.long)
        inverse[torch.tensor(positions) - first] = torch.arange(len(positions))
        ordered = window[inverse]  # [W, F] in input order
        for start in range(0, len(positions), batch_size):
            part = ordered[start : start + batch_size]
            yield Encoded(part, list(range(first + start, first + start + len(part))), [])
        positions, rows = [], []


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

        def features() -> Iterator[tuple[list[int], bool, torch.Tensor]]:
            for chunk, last, tokens in tokenized:
                input_ids = tokens["input_ids"]  # [b, L]
                mask = tokens.get("attention_mask")
                mask = torch.ones_like(input_ids) if mask is None else mask  # [b, L]
                if runner is not None:
                    out = runner(input_ids, mask)  # [b, F]
                else:
                    with torch.inference_mode():
                        out = tower(input_ids.to(target), mask.to(target)).float().cpu()  # [b, F]
                    out = out.clone()  # a plain tensor again, outside inference mode
                yield chunk, last, out

        try:
            yield from _in_order(features(), batch_size)
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

        def vectors() -> Iterator[tuple[list[int], bool, torch.Tensor]]:
            for chunk, last, tokens in tokenized:
                on_device = {k: v.to(target) if hasattr(v, "to") else v for k, v in tokens.items()}
                with torch.inference_mode():
                    features = model.text_features(on_device)  # [b, D]
                yield chunk, last, unit(features)

        try:
            yield from _in_order(vectors(), batch_size)
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
