"""Towers trained from scratch: a small residual CNN, a tiny ViT, a bidirectional GRU and a small
Transformer text encoder. Sized by :class:`retrieval.config.ModelConfig`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from retrieval.data.transforms import ImageTransform
from retrieval.towers.base import ImageTower, TextTower, masked_mean
from retrieval.towers.tokenizer import CaptionTokenizer


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and an identity (or 1x1) shortcut (He et al. 2016).
    GroupNorm (Wu & He 2018) keeps training and inference identical at any batch size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.GroupNorm(_groups(out_channels), out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))  # [B, C, H', W']
        y = self.norm2(self.conv2(y))  # [B, C, H', W']
        return torch.relu(y + self.shortcut(x))  # [B, C, H', W']


class _ScratchImageTower(ImageTower):
    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        return ImageTransform(self.image_size, self.mean, self.std, train=train)


class CNNImageTower(_ScratchImageTower):
    """Stem (3x3, stride 2) + ``layers`` residual stages (channels doubling, stride 2 after the first)
    + global average pooling + LayerNorm. ``output_dim`` is the last stage's channels."""

    def __init__(self, image_size: int, width: int, layers: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__(image_size, mean, std)
        if layers < 1 or width < 1:
            raise ValueError(
                f"cnn tower needs image_layers >= 1 and image_width >= 1, received {layers}, {width}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
        )
        channels = [width * 2**i for i in range(layers)]
        self.stages = nn.ModuleList(
            ResidualBlock(channels[max(i - 1, 0)], channels[i], stride=1 if i == 0 else 2)
            for i in range(layers)
        )
        self.norm = nn.LayerNorm(channels[-1])
        self.output_dim = channels[-1]

    def _feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)  # [B, W, H/2, W/2]
        for stage in self.stages:
            x = stage(x)  # [B, C, h, w]
        return x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.norm(self._feature_map(pixel_values).mean(dim=(2, 3)))  # [B, C]

    def grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, one row per cell: ``[B, h * w, C]`` (what ``forward`` averages)."""
        return self._feature_map(pixel_values).flatten(2).transpose(1, 2)  # [B, h*w, C]

    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def head(self) -> list[nn.Module]:
        return [self.norm]


def _encoder_layer(width: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    if width % heads:
        raise ValueError(
            f"transformer width {width} is not divisible by its {heads} heads; change one of them"
        )
    return nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
    )


class ViTImageTower(_ScratchImageTower):
    """A tiny Vision Transformer (Dosovitskiy et al. 2021): patch embedding, a [CLS] token, learned
    positions, pre-norm blocks, the final [CLS] state as the feature."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        dropout: float,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__(image_size, mean, std)
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}; pick sizes that divide"
            )
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        self.layers = nn.ModuleList(_encoder_layer(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output_dim = width

    def _states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Final normed states, ``[B, 1 + N, W]``: [CLS] first, then the patches."""
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, N, W]
        if x.shape[1] + 1 != self.position.shape[1]:
            raise ValueError(
                f"vit tower expects {self.image_size}x{self.image_size} images, received "
                f"{tuple(pixel_values.shape[-2:])}: use the model's image_transform()"
            )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position  # [B, N+1, W]
        for layer in self.layers:
            x = layer(x)  # [B, N+1, W]
        return self.norm(x)  # [B, N+1, W]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._states(pixel_values)[:, 0]  # [B, W]

    def grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch tokens after the final norm (the [CLS] state left out): ``[B, N, W]``."""
        return self._states(pixel_values)[:, 1:]  # [B, N, W]

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def head(self) -> list[nn.Module]:
        return [self.norm]


class _ScratchTextTower(TextTower):
    def __init__(self, tokenizer: CaptionTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory / "tokenizer.json")

    def preprocess_config(self) -> dict[str, Any]:
        return {"kind": "caption_tokenizer", "tokenizer_sha256": self.tokenizer.digest()}


class GRUTextTower(_ScratchTextTower):
    """Token embeddings + ``layers`` bidirectional GRU layers (Cho et al. 2014) on packed sequences,
    masked mean over time, LayerNorm. ``output_dim`` is ``2 * width``."""

    def __init__(self, tokenizer: CaptionTokenizer, width: int, layers: int, dropout: float) -> None:
        super().__init__(tokenizer)
        self.embed = nn.Embedding(tokenizer.vocab_size, width, padding_idx=0)
        self.layers = nn.ModuleList(
            nn.GRU(width if i == 0 else 2 * width, width, batch_first=True, bidirectional=True)
            for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * width)
        self.output_dim = 2 * width

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last GRU layer's output per token (both directions): ``[B, L, 2W]``, zero at padding."""
        lengths = attention_mask.sum(1).clamp_min(1).cpu()  # [B]
        x = self.dropout(self.embed(input_ids))  # [B, L, W]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        for i, layer in enumerate(self.layers):
            if i:
                packed = PackedSequence(
                    self.dropout(packed.data),
                    packed.batch_sizes,
                    packed.sorted_indices,
                    packed.unsorted_indices,
                )
            packed, _ = layer(packed)
        hidden, _ = pad_packed_sequence(
            packed, batch_first=True, total_length=input_ids.shape[1]
        )  # [B, L, 2W]
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.token_features(input_ids, attention_mask)  # [B, L, 2W]
        return self.norm(masked_mean(hidden, attention_mask))  # [B, 2W]

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def head(self) -> list[nn.Module]:
        return [self.norm]


class TransformerTextTower(_ScratchTextTower):
    """Token + learned position embeddings, pre-norm Transformer blocks (Vaswani et al. 2017) with a
    padding mask, final LayerNorm; ``pooling`` "mean" (masked mean) or "cls" (first token)."""

    def __init__(
        self,
        tokenizer: CaptionTokenizer,
        width: int,
        layers: int,
        heads: int,
        dropout: float,
        pooling: str = "mean",
    ) -> None:
        super().__init__(tokenizer)
        if pooling not in ("mean", "cls"):
            raise ValueError(f"transformer text tower pooling must be 'mean' or 'cls', received {pooling!r}")
        self.pooling = pooling
        self.embed = nn.Embedding(tokenizer.vocab_size, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, tokenizer.context_length, width) * 0.01)
        self.layers = nn.ModuleList(_encoder_layer(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output_dim = width

    def share_trunk(self, image_tower: ViTImageTower) -> None:
        """Siamese mode: run the image tower's blocks and final norm (one set of weights)."""
        if image_tower.output_dim != self.output_dim:
            raise ValueError(
                f"shared trunk needs equal widths, received {image_tower.output_dim}, {self.output_dim}"
            )
        self.layers = image_tower.layers
        self.norm = image_tower.norm

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final normed state of every token: ``[B, L, W]``."""
        length = input_ids.shape[1]
        x = self.embed(input_ids) + self.position[:, :length]  # [B, L, W]
        padding = attention_mask == 0  # [B, L] True where padded
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)  # [B, L, W]
        return self.norm(x)  # [B, L, W]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.token_features(input_ids, attention_mask)  # [B, L, W]
        return x[:, 0] if self.pooling == "cls" else masked_mean(x, attention_mask)  # [B, W]

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def head(self) -> list[nn.Module]:
        return [self.norm]
