"""The check every export passes before it is kept: the exported model, loaded back by the target's
own code, embeds the same inputs as the toolkit model, within a stated tolerance.

The inputs are a few synthetic images put through the model's own preprocessing and a few captions
put through its own tokenizer, so the check compares the networks (weights, layout, pooling,
projections, normalisation); each target's loader is then responsible for its preprocessing,
which the exported files describe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.export.errors import ExportError

__all__ = ["CAPTIONS", "check_embeddings", "sample_images"]

CAPTIONS = ["a photo of a dog", "a red car parked on the road", "cat", "two small green birds on a branch"]
Encoder = Callable[[torch.Tensor], torch.Tensor]


def sample_images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic RGB images of varied sizes (noise over gradients)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = 48 + 16 * i, 64 - 8 * i
        ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        noise = rng.integers(0, 80, size=(h, w, 3))
        images.append(Image.fromarray(np.clip(ramp * (0.5 + 0.2 * i) + noise, 0, 255).astype(np.uint8)))
    return images


def _max_difference(reference: torch.Tensor, got: Any, what: str) -> float:
    got = getattr(got, "pooler_output", got)  # transformers 5 returns an output object
    got = F.normalize(torch.as_tensor(got).float().cpu(), dim=-1)
    if got.shape != reference.shape:
        raise ExportError(
            f"the exported model's {what} embeddings have shape {tuple(got.shape)}, expected {tuple(reference.shape)}"
        )
    return float((got - reference).abs().max())


def check_embeddings(
    model: Any,
    encode_images: Encoder,
    encode_texts: Callable[[dict[str, torch.Tensor]], Any],
    tolerance: float,
    target: str,
) -> dict[str, float]:
    """``{"image": d, "text": d}``, the largest absolute difference between the toolkit's unit vectors
    and the exported model's (normalised) ones on the sample inputs; :class:`ExportError` when one
    exceeds ``tolerance``. ``encode_images`` takes ``pixel_values [B, 3, H, W]``, ``encode_texts``
    the toolkit's tokens (``input_ids``, ``attention_mask``)."""
    transform = model.image_transform(False)
    pixels = torch.stack([transform(image) for image in sample_images()]).cpu()  # [B, 3, H, W]
    tokens = {k: v.cpu() for k, v in model.tokenize(CAPTIONS).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_ref = model.image_features(pixels).float().cpu()  # [B, D]
            text_ref = model.text_features(tokens).float().cpu()  # [N, D]
            diffs = {
                "image": _max_difference(image_ref, encode_images(pixels), "image"),
                "text": _max_difference(text_ref, encode_texts(tokens), "text"),
            }
    finally:
        model.train(was_training)
    worst = max(diffs, key=lambda k: diffs[k])
    if not diffs[worst] <= tolerance:
        raise ExportError(
            f"the {target} export does not reproduce the model: its {worst} embeddings differ by up to "
            f"{diffs[worst]:.2e} (tolerance {tolerance:.0e}); nothing was written"
        )
    return diffs
