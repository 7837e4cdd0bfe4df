"""Small images written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.images import rgb_image


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three good images (a.jpg, b.png, sub/c.jpg) under tmp_path/images."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rgb_image(seed=1).save(root / "a.jpg")
    rgb_image(seed=2).save(root / "b.png")
    rgb_image(seed=3).save(root / "sub" / "c.jpg")
    return root
