"""A soft colour histogram of an image: the part of its look that pooled CNN features keep least.

Features pooled from an ImageNet network describe shapes and textures well and colours poorly:
two emoji that differ only in skin tone, or two product shots that differ only in colour, land
almost on the same vector, while users type "dark skin tone" or "red dress". Colour histograms are
the classic answer of content-based image retrieval (Swain & Ballard 1991, "Color indexing");
:class:`ColourHistogram` computes one that a network graph can hold and an exported ONNX graph can
run: the pixels (averaged over ``pool x pool`` cells, so anti-aliased edges matter less) are
assigned softly to the ``levels ** 3`` centres of a regular RGB grid with a Gaussian kernel of
width half the grid spacing, and the assignments are averaged over the image.

The kernel factorises over the channels, and so does its normalisation over a full grid: the
assignment of a pixel to centre ``(r, g, b)`` is the product of three per-channel softmaxes over
``levels`` values. The histogram is then one batched matrix product of the red-green outer products
with the blue assignments, ``levels`` times smaller in memory than scoring every centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_LEVELS", "ColourHistogram"]

MAX_LEVELS = 16  # 4,096 bins; beyond that the bins are finer than the colours images are drawn with


class ColourHistogram(nn.Module):
    """``pixel_values [B, 3, H, W]`` (normalised by ``mean`` / ``std``, RGB) -> ``[B, levels ** 3]``:
    the share of the image near each centre of a ``levels x levels x levels`` RGB grid (each row sums
    to 1; bins ordered red, then green, then blue, the last varying fastest). It has no trainable
    parameters."""

    def __init__(self, levels: int, mean: Sequence[float], std: Sequence[float], pool: int = 4) -> None:
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= MAX_LEVELS:
            raise ValueError(
                f"a colour histogram needs 2 to {MAX_LEVELS} levels per channel, received {levels!r} "
                "(6 gives 216 bins)"
            )
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(
                f"the colour histogram's pooling cell must be a positive integer, received {pool!r}"
            )
        self.levels = levels
        self.pool = pool
        self.size = levels**3
        self.sigma = 0.5 / (levels - 1)  # half the spacing of the grid
        self.register_buffer("centres", torch.linspace(0.0, 1.0, levels), persistent=False)  # [L]
        self.register_buffer(
            "mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rgb = pixel_values.float() * self.std + self.mean  # [B, 3, H, W] in [0, 1]
        if self.pool > 1:
            rgb = F.avg_pool2d(rgb, self.pool)  # [B, 3, h, w]
        cells = rgb.flatten(2)  # [B, 3, N]
        logits = -((cells.unsqueeze(-1) - self.centres) ** 2) / (2.0 * self.sigma**2)  # [B, 3, N, L]
        assign = torch.softmax(logits, dim=-1)  # [B, 3, N, L]: per channel, sums to 1 over L
        red, green, blue = assign.unbind(dim=1)  # [B, N, L] each
        red_green = (red.unsqueeze(-1) * green.unsqueeze(-2)).flatten(2)  # [B, N, L * L]
        counts = torch.bmm(red_green.transpose(1, 2), blue)  # [B, L * L, L]
        return counts.flatten(1) / cells.shape[-1]  # [B, L ** 3]

    def extra_repr(self) -> str:
        return f"levels={self.levels}, pool={self.pool}"
