"""Captions in, unit vectors (or tower features) out: the next batches tokenized in a helper thread,
the tower run by torch or ONNX Runtime (:mod:`retrieval.encoding.towers`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
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
from retrieval.encoding.feature_cache import FeatureCache, content_hash, entry_key, namespace
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


TEXT_CACHE_KIND = "text"  # the namespace's second part for text features (images give their transform)


class _TextLookup:
    """Text tower features in a :class:`FeatureCache`, keyed by the text's UTF-8 bytes under the
    tower's fingerprint (which covers its tokenizer)."""

    def __init__(self, model: Any, cache: FeatureCache) -> None:
        self.cache = cache
        self.space = namespace(towers.fingerprint(model, "text"), {"kind": TEXT_CACHE_KIND})

    def key(self, text: str) -> bytes:
        return entry_key(self.space, content_hash(text.encode("utf-8")))

    def get(self, texts: Sequence[str], positions: Sequence[int]) -> dict[int, np.ndarray]:
        keys = {i: self.key(texts[i]) for i in positions}
        found = self.cache.get_many(list(keys.values()))
        rows = {i: found[k] for i, k in keys.items() if k in found}
        self.cache.hits += len(rows)
        return rows

    def put(self, texts: Sequence[str], positions: Sequence[int], rows: torch.Tensor) -> None:
        self.cache.misses += len(positions)
        self.cache.put_many([(self.key(texts[i]), row.numpy()) for i, row in zip(positions, rows)])


def _text_lookup(model: Any, feature_cache: FeatureCache | bool | None) -> _TextLookup | None:
    if feature_cache is None or feature_cache is False or towers.tower_of(model, "text") is None:
        return None
    return _TextLookup(model, FeatureCache() if feature_cache is True else feature_cache)


def _tokenized(
    model: Any, texts: Sequence[str], batch_size: int, lookup: _TextLookup | None = None
) -> Iterator[tuple[list[int], bool, Any, torch.Tensor | None]]:
    """``(positions, ends its window, tokens, None)`` per batch to run, in the order of
    :func:`_windows`, and ``(positions, ends its window, None, features)`` for the texts of a window
    that ``lookup`` has; the next batches are tokenized in a helper thread."""

    def batches() -> Iterator[tuple[list[int], bool, Any, torch.Tensor | None]]:
        for order in _windows(texts, batch_size):
            found = lookup.get(texts, order) if lookup is not None else {}
            todo = [i for i in order if i not in found]
            if found:
                rows = torch.from_numpy(np.stack([np.asarray(found[i], dtype=np.float32) for i in found]))
                yield list(found), not todo, None, rows
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                tokens = model.tokenize([texts[i] for i in chunk])
                yield chunk, start + batch_size >= len(todo), tokens, None

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
    feature_cache: FeatureCache | bool | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch whose ``vectors`` are the text tower's outputs ``[b, F]``
    (float32 CPU, before the head) for a model whose head runs apart from its tower; the tower runs
    on ``runtime`` (None: the model's ``runtime``, else torch). Features found in ``feature_cache``
    (a :class:`FeatureCache`, True for the default one) are read instead of computed, and computed
    ones are added to it (keyed by the text and the tower's fingerprint, tokenizer included)."""
    _check_texts(texts, "encode_text_features")
    check_batch_size(batch_size)
    tower = towers.tower_of(model, "text")
    if tower is None:
        raise ValueError(
            f"{type(model).__name__} has no text tower whose head runs apart from it: use encode_texts"
        )
    with inference(model, device) as target:
        runner = towers.tower_runner(model, "text", runtime, target)
        lookup = _text_lookup(model, feature_cache)
        tokenized = _tokenized(model, texts, batch_size, lookup)

        def features() -> Iterator[tuple[list[int], bool, torch.Tensor]]:
            for chunk, last, tokens, cached in tokenized:
                if cached is not None:
                    yield chunk, last, cached
                    continue
                input_ids = tokens["input_ids"]  # [b, L]
                mask = tokens.get("attention_mask")
                mask = torch.ones_like(input_ids) if mask is None else mask  # [b, L]
                if runner is not None:
                    out = runner(input_ids, mask)  # [b, F]
                else:
                    with torch.inference_mode():
                        out = tower(input_ids.to(target), mask.to(target)).float().cpu()  # [b, F]
                    out = out.clone()  # a plain tensor again, outside inference mode
                if lookup is not None:
                    lookup.put(texts, chunk, out)
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
    feature_cache: FeatureCache | bool | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``texts``, in order; the next batches are tokenized in a
    helper thread while the current one runs its forward pass. A model whose head runs apart from its
    tower (a :class:`~retrieval.model.TwinEncoder`) runs the tower on ``runtime`` (None: the model's
    ``runtime``, else torch) and the head on torch, reading and adding tower features in
    ``feature_cache`` (a :class:`FeatureCache`, True for the default one, None / False: off)."""
    _check_texts(texts, "encode_texts")
    check_batch_size(batch_size)
    if not (hasattr(model, "tokenize") and hasattr(model, "text_features")):
        yield from black_box(model, model.encode_texts, texts, batch_size, device, False)
        return
    if towers.tower_of(model, "text") is not None:
        features = text_feature_batches(
            model, texts, batch_size=batch_size, device=device, runtime=runtime, feature_cache=feature_cache
        )
        with inference(model, device):
            for encoded in features:
                with torch.inference_mode():
                    vectors = model.project_text(encoded.vectors)  # [b, D]
                yield Encoded(unit(vectors.clone()), encoded.positions, [])
        return
    tokenized = _tokenized(model, texts, batch_size)
    with inference(model, device) as target:

        def vectors() -> Iterator[tuple[list[int], bool, torch.Tensor]]:
            for chunk, last, tokens, _ in tokenized:
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
    feature_cache: FeatureCache | bool | None = None,
) -> Encoded:
    """All of ``texts`` encoded (:func:`text_batches` gathered): ``vectors [n, D]``."""
    batches = text_batches(
        model, texts, batch_size=batch_size, device=device, runtime=runtime, feature_cache=feature_cache
    )
    return gather(model, progress_bar(batches, progress, len(texts), batch_size, "texts"))


def encode_text_features(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
    runtime: str | None = None,
    feature_cache: FeatureCache | bool | None = None,
) -> Encoded:
    """All of ``texts`` through the text tower alone: ``vectors [n, F]`` are tower features, what
    ``model.project_text`` turns into unit vectors."""
    batches = text_feature_batches(
        model, texts, batch_size=batch_size, device=device, runtime=runtime, feature_cache=feature_cache
    )
    parts = list(progress_bar(batches, progress, len(texts), batch_size, "texts"))
    if not parts:
        dim = int(getattr(model.text_tower, "output_dim", 0))
        return Encoded(torch.empty((0, dim)), [], [])
    return Encoded(torch.cat([p.vectors for p in parts]), [i for p in parts for i in p.positions], [])
