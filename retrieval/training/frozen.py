"""Outputs of a fully locked text tower, computed once per unique caption (LiT-style training).

When the text tower is locked with no unfrozen layer (``lock_text`` and ``unfreeze_text_layers == 0``),
it runs in eval mode and never changes, so its output for a caption is the same every epoch. The
trainer then encodes every unique training caption once, up front, in a fixed order and fixed
batches (so a resumed run gets the very same features), and each step only applies the trainable
projection head: ``normalize(text_projection(cached tower output))``, as ``text_features`` does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


def text_tower_is_frozen(model: Any) -> bool:
    """True when no parameter of the text tower trains and the projection is a separate module."""
    tower = getattr(model, "text_tower", None)
    if tower is None or getattr(model.config, "shared", False):
        return False
    return not any(p.requires_grad for p in tower.parameters())


class FrozenTextFeatures:
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
        was_training = model.text_tower.training
        model.text_tower.eval()
        with torch.no_grad(), autocast or contextlib.nullcontext():
            for start in range(0, len(unique), batch_size):
                tokens = model.tokenize(unique[start : start + batch_size])
                input_ids = tokens["input_ids"].to(device)  # [b, L]
                mask = tokens.get("attention_mask")
                mask = torch.ones_like(input_ids) if mask is None else mask.to(device)  # [b, L]
                parts.append(model.text_tower(input_ids, mask))  # [b, F]
        model.text_tower.train(was_training)
        self.features = torch.cat(parts)  # [U, F]
        logger.info("cached the locked text tower's output for %d unique captions", len(unique))

    def __call__(self, model: Any, captions: Sequence[str]) -> Tensor:
        rows = torch.tensor([self.index[c] for c in captions], device=self.features.device)  # [B]
        features = self.features.index_select(0, rows)  # [B, F]
        return F.normalize(model.text_projection(features).float(), dim=-1)  # [B, D]
