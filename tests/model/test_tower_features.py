"""Towers expose what they pool: image grids ``[B, N, C]`` and token features ``[B, L, H]``, consistent
with the pooled features of ``forward``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from retrieval.model import build_model
from retrieval.towers.base import ImageTower, TextTower, masked_mean

from support.tiny import CAPTIONS, tiny_config


def _pixels(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_cnn_grid_is_the_map_forward_averages() -> None:
    torch.manual_seed(0)
    tower = build_model(tiny_config("cnn", "gru"), CAPTIONS, device="cpu").eval().image_tower
    with torch.no_grad():
        grid = tower.grid_features(_pixels(32))  # 32 px, stem /2, 2 stages (the second /2): 8x8 cells
        assert grid.shape == (3, 64, tower.output_dim)
        torch.testing.assert_close(tower.norm(grid.mean(1)), tower(_pixels(32)))


def test_vit_grid_is_its_patch_tokens() -> None:
    torch.manual_seed(0)
    tower = build_model(tiny_config("vit", "transformer"), CAPTIONS, device="cpu").eval().image_tower
    with torch.no_grad():
        grid = tower.grid_features(_pixels(32))
        states = tower._states(_pixels(32))  # [B, 1 + N, W]
    assert grid.shape == (3, (32 // 8) ** 2, tower.output_dim)
    torch.testing.assert_close(grid, states[:, 1:])
    torch.testing.assert_close(tower(_pixels(32)).detach(), states[:, 0])


@pytest.mark.parametrize("text_tower", ["gru", "transformer"])
def test_scratch_token_features_pool_to_the_text_feature(text_tower: str) -> None:
    torch.manual_seed(0)
    tower = build_model(tiny_config("cnn", text_tower), CAPTIONS, device="cpu").eval().text_tower
    tokens = tower.tokenize(CAPTIONS)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    with torch.no_grad():
        hidden = tower.token_features(ids, mask)
        pooled = masked_mean(hidden, mask)
        if text_tower == "gru":
            pooled = tower.norm(pooled)
        torch.testing.assert_close(pooled, tower(ids, mask))
    assert hidden.shape == (len(CAPTIONS), ids.shape[1], tower.output_dim)


def test_hf_towers_give_last_hidden_states(clip_dir: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(f"hf:{clip_dir}", f"hf:{clip_dir}", embed_dim=8), device="cpu").eval()
    pixels = _pixels(30)
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        grid = model.image_grid(pixels)
        hidden = model.text_token_features(tokens)
        assert torch.equal(grid, model.image_tower.backbone(pixel_values=pixels).last_hidden_state)
        expected = model.text_tower.backbone(**tokens).last_hidden_state
    assert grid.shape == (3, 1 + (30 // 6) ** 2, 32)  # [CLS] + 5x5 patches, hidden size 32
    assert hidden.shape == (len(CAPTIONS), tokens["input_ids"].shape[1], 32)
    torch.testing.assert_close(hidden, expected)


def test_towers_without_features_say_what_needs_them() -> None:
    class Flat(ImageTower):
        output_dim = 3

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values.mean((2, 3))

        def image_transform(self, train: bool = False):  # type: ignore[no-untyped-def]
            return lambda image: image

        def blocks(self) -> list[nn.Module]:
            return []

    class Bag(TextTower):
        output_dim = 3

        def tokenize(self, texts):  # type: ignore[no-untyped-def]
            return {}

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return input_ids.float()

        def preprocess_config(self) -> dict:
            return {}

        def blocks(self) -> list[nn.Module]:
            return []

    with pytest.raises(NotImplementedError, match=r"Flat does not expose grid features.*cross-attention"):
        Flat().grid_features(torch.zeros(1, 3, 4, 4))
    with pytest.raises(NotImplementedError, match=r"Bag does not expose token features.*cross-attention"):
        Bag().token_features(torch.zeros(1, 2), torch.ones(1, 2))
