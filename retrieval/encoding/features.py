"""Features before pooling: the image grid and the caption tokens a cross-attention match head reads.

The same inference discipline as the vectors (eval mode held, device chosen, images decoded in a
helper thread); the results are plain float32 CPU tensors, usable as training inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from retrieval.encoding.batches import IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE, ImageInput, check_batch_size
from retrieval.encoding.images import decoded_batches
from retrieval.encoding.runtime import inference


def encode_grids(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``[n, N, C]`` float32 CPU: ``model.image_grid`` of every image (broken images raise)."""
    check_batch_size(batch_size)
    parts = []
    with inference(model, device) as target:
        batches = decoded_batches(images, model.image_transform(), batch_size, skip_broken=False)
        try:
            for _, pixels, _ in batches:
                with torch.no_grad():
                    parts.append(model.image_grid(pixels.to(target)).float().cpu())  # [b, N, C]
        finally:
            batches.close()
    if not parts:
        raise ValueError("encode_grids received no images: pass at least one")
    return torch.cat(parts)


def encode_tokens(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [n, L, H] float32, mask [n, L] bool)`` on the CPU: ``model.text_token_features``
    of every caption, padded to the longest caption (zeros, mask False)."""
    if isinstance(texts, str) or not len(texts):
        raise ValueError(f"encode_tokens expects a non-empty list of strings, received {texts!r:.60}")
    check_batch_size(batch_size)
    feats, masks = [], []
    with inference(model, device) as target:
        for start in range(0, len(texts), batch_size):
            tokens = model.tokenize(list(texts[start : start + batch_size]))
            with torch.no_grad():
                hidden = model.text_token_features({k: v.to(target) for k, v in tokens.items()})  # [b, l, H]
            feats.append(hidden.float().cpu())
            mask = tokens.get("attention_mask")
            masks.append(
                torch.ones(hidden.shape[:2], dtype=torch.bool) if mask is None else mask.bool().cpu()
            )
    length = max(f.shape[1] for f in feats)
    out = torch.zeros(len(texts), length, feats[0].shape[2])  # [n, L, H]
    out_mask = torch.zeros(len(texts), length, dtype=torch.bool)  # [n, L]
    row = 0
    for f, m in zip(feats, masks):
        out[row : row + len(f), : f.shape[1]] = f * m[..., None]
        out_mask[row : row + len(f), : f.shape[1]] = m
        row += len(f)
    return out, out_mask
