"""Outputs of fully locked towers, computed once per unique caption or image (LiT-style training).

A tower with no trainable parameter runs in eval mode and never changes, so its output for a caption
is the same every epoch; so is its output for an image when training images are not augmented
(``TrainConfig.augment=False``). The trainer then encodes every unique training caption (image)
once, up front, in a fixed order and fixed batches (a resumed run gets the very same features), and
each step only applies the trainable projection head, as ``text_features`` / ``image_features`` do:
``normalize(projection(cached tower output))``. The locked towers run on ``TrainConfig.runtime``
(ONNX Runtime on the CPU under "auto"), and the image features are shared with ``embed`` and
``eval`` through the feature cache (``TrainConfig.feature_cache``). Images that cannot be decoded are left out of the
cache and their pairs are skipped (and counted) like broken images in the normal data path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from retrieval import encoding
from retrieval.train.prefix import PrefixImageFeatures, features_through_prefix, planned_split, tower_split

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
    """``captions -> [B, D]`` unit text embeddings from cached tower outputs (differentiable in the head).

    The tower runs on ``runtime`` (:mod:`retrieval.encoding.towers`: ONNX Runtime under "auto" on
    the CPU when the tower exports), once per unique caption; with ``feature_cache`` (a
    :class:`~retrieval.encoding.FeatureCache`) its outputs are read from and added to the shared
    cache, so the adaptation phase, a rerun, ``embed`` and ``eval`` of the same captions skip it."""

    def __init__(
        self,
        model: Any,
        captions: Sequence[str],
        device: torch.device,
        batch_size: int = 256,
        *,
        runtime: str = "torch",
        feature_cache: Any = None,
    ) -> None:
        unique = sorted(set(captions))
        self.index = {caption: i for i, caption in enumerate(unique)}
        encoded = encoding.encode_text_features(
            model, unique, batch_size=batch_size, device=device, runtime=runtime, feature_cache=feature_cache
        )
        self.features = encoded.vectors.to(device)  # [U, F]
        logger.info("cached the locked text tower's output for %d unique captions", len(unique))

    def __call__(self, model: Any, captions: Sequence[str]) -> Tensor:
        return model.project_text(self.rows(captions))  # [B, D]


class FrozenImageFeatures(_Cache):
    """``image refs -> [B, D]`` unit image embeddings from cached tower outputs (eval transform).

    The tower runs on ``runtime``, once per unique image; with ``feature_cache`` (a
    :class:`~retrieval.encoding.FeatureCache`, True for the default one) the features are read from
    and added to the shared cache, so a rerun, ``embed`` and ``eval`` of the same images skip the
    tower. With ``split`` (:func:`~retrieval.train.prefix.planned_split`: the run adapts the tower
    later) the tower runs as its locked prefix, whose output the cache keeps for the adaptation
    phase, then its suffix (:func:`~retrieval.train.prefix.features_through_prefix`)."""

    def __init__(
        self,
        model: Any,
        images: Sequence[str],
        device: torch.device,
        batch_size: int = 256,
        *,
        runtime: str = "torch",
        feature_cache: Any = None,
        split: int | None = None,
    ) -> None:
        unique = sorted(set(images))
        if split is not None and isinstance(feature_cache, encoding.FeatureCache):
            features, positions, self.broken = features_through_prefix(
                model, unique, split, device, batch_size, feature_cache=feature_cache, runtime=runtime
            )
        else:
            encoded = encoding.encode_image_features(
                model,
                unique,
                batch_size=batch_size,
                device=device,
                skip_broken=True,
                runtime=runtime,
                feature_cache=feature_cache,
            )
            self.broken = {s.item: s.detail for s in encoded.skipped}
            features, positions = encoded.vectors, encoded.positions
        # row of each readable image in the features, in decoding order
        self.index = {unique[i]: row for row, i in enumerate(positions)}
        if not self.index:
            raise ValueError("no training image could be decoded")
        self.features = features.to(device)  # [U, F]
        logger.info(
            "cached the locked image tower's output for %d unique images (%d unreadable)%s",
            len(self.index),
            len(self.broken),
            f", through its prefix before part {split}" if split is not None else "",
        )

    def __call__(self, model: Any, images: Sequence[str]) -> Tensor:
        return model.project_image(self.rows(images))  # [B, D]


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
    """Whether training images are augmented: ``config.augment``, or when it is None, whether the
    image tower trains whole (a locked tower's outputs, and a partly trained tower's locked prefix,
    are then computed once: :mod:`retrieval.train.prefix`)."""
    if config.augment is not None:
        return bool(config.augment)
    return not image_tower_is_frozen(model) and tower_split(model) is None


AUTO_DATA_WORKERS = 2  # worker processes "auto" gives a run that decodes images every step


def data_workers(config: Any, collate: Any) -> int:
    """DataLoader worker processes of a training run: ``config.num_workers``, or when None, none
    when the images' features are cached (nothing is decoded per step) and otherwise
    :data:`AUTO_DATA_WORKERS` (at most one per core), so decoding and augmenting overlap the
    forward and backward passes (tiny towers on 96 px PNGs: 2.0x the pairs/s of decoding in the
    training process; benchmarks/results/train.md)."""
    if config.num_workers is not None:
        return int(config.num_workers)
    if collate is collate_refs:
        return 0
    return min(AUTO_DATA_WORKERS, os.cpu_count() or 1)


def feature_cache(config: Any) -> Any:
    """The shared feature cache when ``config.feature_cache`` is on (else None)."""
    return encoding.FeatureCache() if getattr(config, "feature_cache", False) else None


def training_data(
    config: Any, model: Any, pairs: Any, device: torch.device, prepared: Any = None
) -> tuple[Any, ...]:
    """``(dataset, collate_fn, text_cache, image_cache)`` for training on ``pairs``.

    The dataset is keyed by ``(index, seed)`` (:class:`~retrieval.train.sampling.SeededItems`).
    A fully locked text tower is cached when ``config.cache_locked_features``; a fully locked image
    tower too when ``config.augment`` is off, and then images are not decoded per step at all; so is
    the locked prefix of a partly trained image tower that splits (:mod:`retrieval.train.prefix`). The
    locked towers run on ``config.runtime``; the image features go to the shared feature cache when
    ``config.feature_cache``. ``prepared`` is a prefix cache of the training images built already.
    """
    from retrieval.data import PairDataset, collate_pairs
    from retrieval.train.sampling import SeededItems

    text_cache = image_cache = None
    augment = augments(config, model)
    if config.cache_locked_features and text_tower_is_frozen(model):
        text_cache = FrozenTextFeatures(
            model,
            pairs.captions(),
            device,
            config.val_batch_size,
            runtime=config.runtime,
            feature_cache=feature_cache(config),
        )
    split = tower_split(model)
    if config.cache_locked_features and not augment and split is not None:
        image_cache = prepared
        if getattr(prepared, "split", None) != split:
            image_cache = PrefixImageFeatures(
                model,
                pairs.images(),
                split,
                device,
                config.val_batch_size,
                feature_cache=feature_cache(config),
                runtime=config.runtime,
            )
        return SeededItems(PairRefs(pairs.pairs, image_cache.broken)), collate_refs, text_cache, image_cache
    if config.cache_locked_features and not augment and image_tower_is_frozen(model):
        images = pairs.images()
        image_cache = FrozenImageFeatures(
            model,
            images,
            device,
            config.val_batch_size,
            runtime=config.runtime,
            feature_cache=feature_cache(config),
            split=planned_split(config, model, len(set(images))),
        )
        return SeededItems(PairRefs(pairs.pairs, image_cache.broken)), collate_refs, text_cache, image_cache
    dataset = PairDataset(pairs.pairs, model.image_transform(train=augment))
    return SeededItems(dataset), collate_pairs, text_cache, image_cache
