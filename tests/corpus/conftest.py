"""Collections with planted near-duplicates, for the corpus tools' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.duplicates import make_collection, planted
from support.fixtures import one_torch_thread  # noqa: F401  (autouse)


@pytest.fixture
def dup_collection(tmp_path: Path) -> tuple[Path, list[list[int]]]:
    """60 image items (5 planted groups of 3) with a ``quality`` field, in a Flat collection."""
    vectors, groups = planted(60)
    metadata = [
        {"modality": "image", "path": f"/nowhere/{i}.png", "caption": f"item {i}", "quality": float(i % 7)}
        for i in range(60)
    ]
    return make_collection(tmp_path / "coll", vectors, metadata), groups
