"""The tower base classes are abstract: a tower missing part of the interface cannot be built."""

from __future__ import annotations

import pytest
import torch

from retrieval.towers.base import ImageTower, TextTower


def test_image_tower_without_its_methods_cannot_be_built() -> None:
    class Incomplete(ImageTower):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values.flatten(1)

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_text_tower_without_its_methods_cannot_be_built() -> None:
    class Incomplete(TextTower):
        def tokenize(self, texts):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
