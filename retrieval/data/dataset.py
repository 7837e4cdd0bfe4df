"""A torch ``Dataset`` of pairs that never crashes on a broken image: it yields ``None`` and the
collate function drops and counts it (``batch["skipped"]``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from retrieval.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from retrieval.data.records import Pair

logger = logging.getLogger(__name__)


class PairDataset(Dataset):
    """Items are ``{"pixel_values": [3, H, W], "caption": str, "image_id": str, "index": int}``,
    or ``None`` when the image cannot be decoded or the caption is empty (see :func:`collate_pairs`)."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        image_transform: Callable[[Image.Image], torch.Tensor],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.pairs = pairs
        self.image_transform = image_transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        pair = self.pairs[index]
        if not pair.caption or not pair.caption.strip():
            logger.debug("skipping pair %d (%s): empty caption", index, pair.image)
            return None
        try:
            image = load_image(pair.image, max_pixels=self.max_pixels)
            pixel_values = self.image_transform(image)  # [3, H, W]
        except (ImageDecodeError, OSError, ValueError) as exc:
            logger.debug("skipping pair %d: %s", index, exc)
            return None
        return {
            "pixel_values": pixel_values,
            "caption": pair.caption,
            "image_id": pair.image_id,
            "index": index,
        }


def collate_pairs(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the usable items of a batch; ``None`` items are dropped and counted in ``"skipped"``.

    Returns ``{"pixel_values": [B, 3, H, W], "captions": list[str], "image_ids": list[str],
    "indices": list[int], "skipped": int}``; when every item was broken, ``B == 0`` and
    ``pixel_values`` has shape ``[0, 3, 0, 0]``.
    """
    items = [item for item in batch if item is not None]
    skipped = len(batch) - len(items)
    if not items:
        pixel_values = torch.empty((0, 3, 0, 0), dtype=torch.float32)
    else:
        pixel_values = torch.stack([item["pixel_values"] for item in items])  # [B, 3, H, W]
    return {
        "pixel_values": pixel_values,
        "captions": [item["caption"] for item in items],
        "image_ids": [item["image_id"] for item in items],
        "indices": [item["index"] for item in items],
        "skipped": skipped,
    }
