"""Outputs of fully locked towers, computed once per unique caption or image (LiT-style training).

A tower with no trainable parameter runs in eval mode and never changes, so its output for a caption
is the same every epoch; so is its output for an image when training images are not augmented
(``TrainConfig.augment=False``). The trainer then encodes every unique training caption (image)
once, up front, in a fixed order and fixed batches (a resumed run gets the very same features), and
each step only applies the trainable projection head, as ``text_features`` / ``image_features`` do:
``normalize(projection(cached tower output))``. Images that cannot be decoded are left out of the
cache and their pairs are skipped (and counted) like broken images in the normal data path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from retrieval.encoding import decoded_batches

logger = logging.getLogger(__name__)


def _tower_is_frozen(model: Any, name: str) -> bool:
    tower = getattr(model, name, None)
    if tower is None or getattr(model.config, "shared", False):
        return False
    return not any(p.requires_grad for p in tower.parameters())


def text_tower_is_frozen(model: Any) -> bool:
    """True when no parameter of the text tower trains (and the towers are not one shared trunk)."""
    return _tower_is_frozen(model, "text_tower")


def image_tower_is_frozen(model: Any) -> bool:
    """True when no parameter of the image tower trains (and the towers are not one shared trunk)."""
    return _tower_is_frozen(model, "image_tower")


class _Cache:
    index: dict[str, int]
    features: Tensor  # [U, F] tower outputs

    def rows(self, keys: Sequence[str]) -> Tensor:
        ids = torch.tensor([self.index[k] for k in keys], device=self.features.device)  # [B]
        return self.features.index_select(0, ids)  # [B, F]


class FrozenTextFeatures(_Cache):
    """``captions -> [B, D]`` unit text embeddings from cached tower outputs (differentiable in the head)."""

    def __init__(
        self,
        model: Any,
        captions: Sequence[str],
        device: torch.device,
        batch_size: int = 256,
        autocast: Any = None,
    ) -> None:
        unique = sorted(set(captions))
        self.index = {caption: i for i, caption in enumerate(unique)}
        parts = []
        with _eval(model.text_tower), torch.no_grad(), autocast or contextlib.nullcontext():
            for start in range(0, len(unique), batch_size):
                tokens = model.tokenize(unique[start : start + batch_size])
                input_ids = tokens["input_ids"].to(device)  # [b, L]
                mask = tokens.get("attention_mask")
                mask = torch.ones_like(input_ids) if mask is None else mask.to(device)  # [b, L]
                parts.append(model.text_tower(input_ids, mask))  # [b, F]
        self.features = torch.cat(parts)  # [U, F]
        logger.info("cached the locked text tower's output for %d unique captions", len(unique))

    def __call__(self, model: Any, captions: Sequence[str]) -> Tensor:
        return F.normalize(model.text_projection(self.rows(captions)).float(), dim=-1)  # [B, D]


class FrozenImageFeatures(_Cache):
    """``image refs -> [B, D]`` unit image embeddings from cached tower outputs (eval transform)."""

    def __init__(
        self,
        model: Any,
        images: Sequence[str],
        device: torch.device,
        batch_size: int = 256,
        autocast: Any = None,
    ) -> None:
        transform = model.image_transform(train=False)
        unique = sorted(set(images))
        self.broken: dict[str, str] = {}
        self.index = {}
        parts = []
        with _eval(model.image_tower), torch.no_grad(), autocast or contextlib.nullcontext():
            for positions, pixels, skipped in decoded_batches(unique, transform, batch_size):
                self.broken.update((s.item, s.detail) for s in skipped)
                for i in positions:  # row of the image in the features, in decoding order
                    self.index[unique[i]] = len(self.index)
                if pixels is not None:
                    parts.append(model.image_tower(pixels.to(device)))  # [b, F]
        if not parts:
            raise ValueError("no training image could be decoded")
        self.features = torch.cat(parts)  # [U, F]
        logger.info(
            "cached the locked image tower's output for %d unique images (%d unreadable)",
            len(self.index),
            len(self.broken),
        )

    def __call__(self, model: Any, images: Sequence[str]) -> Tensor:
        return F.normalize(model.image_projection(self.rows(images)).float(), dim=-1)  # [B, D]


@contextlib.contextmanager
def _eval(module: torch.nn.Module) -> Any:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class PairRefs(Dataset):
    """Pairs without decoding their images (the image tower's outputs are cached): items are
    ``{"image": ref, "caption", "image_id", "index"}``, or ``None`` for an empty caption or an image
    the cache could not decode."""

    def __init__(self, pairs: Sequence[Any], broken: Any = ()) -> None:
        self.pairs = pairs
        self.broken = set(broken)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        pair = self.pairs[index]
        if not pair.caption or not pair.caption.strip() or pair.image in self.broken:
            return None
        return {"image": pair.image, "caption": pair.caption, "image_id": pair.image_id, "index": index}


def collate_refs(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Like :func:`retrieval.data.collate_pairs` with image references instead of pixels."""
    items = [item for item in batch if item is not None]
    return {
        "images": [item["image"] for item in items],
        "captions": [item["caption"] for item in items],
        "image_ids": [item["image_id"] for item in items],
        "indices": [item["index"] for item in items],
        "skipped": len(batch) - len(items),
    }


def augments(config: Any, model: Any) -> bool:
    """Whether training images are augmented: ``config.augment``, or when it is None, whether any
    parameter of the image tower trains (a locked tower's outputs are then computed once)."""
    if config.augment is not None:
        return bool(config.augment)
    return not image_tower_is_frozen(model)


def training_data(
    config: Any, model: Any, pairs: Any, device: torch.device, autocast: Any
) -> tuple[Any, ...]:
    """``(dataset, collate_fn, text_cache, image_cache)`` for training on ``pairs``.

    The dataset is keyed by ``(index, seed)`` (:class:`~retrieval.train.sampling.SeededItems`).
    A fully locked text tower is cached when ``config.cache_locked_features``; a fully locked image
    tower too when ``config.augment`` is off, and then images are not decoded per step at all.
    """
    from retrieval.data import PairDataset, collate_pairs
    from retrieval.train.sampling import SeededItems

    text_cache = image_cache = None
    augment = augments(config, model)
    if config.cache_locked_features and text_tower_is_frozen(model):
        text_cache = FrozenTextFeatures(model, pairs.captions(), device, config.val_batch_size, autocast)
    if config.cache_locked_features and not augment and image_tower_is_frozen(model):
        image_cache = FrozenImageFeatures(model, pairs.images(), device, config.val_batch_size, autocast)
        return SeededItems(PairRefs(pairs.pairs, image_cache.broken)), collate_refs, text_cache, image_cache
    dataset = PairDataset(pairs.pairs, model.image_transform(train=augment))
    return SeededItems(dataset), collate_pairs, text_cache, image_cache
