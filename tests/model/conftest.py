"""Tiny models shared by the model tests (built once per session, handed out as deep copies)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hf_fixtures import save_tiny_clip, save_tiny_siglip

from retrieval.config import ModelConfig
from retrieval.model import TwinEncoder, build_model

CAPTIONS = [
    "a red car",
    "a blue dog running",
    "two green cats",
    "a small red boat on the water",
    "the big dog",
]
TINY = {
    "embed_dim": 32,
    "image_size": 32,
    "image_width": 16,
    "image_layers": 2,
    "image_heads": 2,
    "patch_size": 8,
    "text_width": 16,
    "text_layers": 2,
    "text_heads": 2,
    "vocab_size": 300,
    "context_length": 16,
}


def tiny_config(image_tower: str = "cnn", text_tower: str = "gru", **changes: object) -> ModelConfig:
    return ModelConfig(image_tower=image_tower, text_tower=text_tower, **{**TINY, **changes})


@pytest.fixture(scope="session")
def _cnn_gru() -> TwinEncoder:
    return build_model(tiny_config(), CAPTIONS, device="cpu").eval()


@pytest.fixture
def cnn_gru(_cnn_gru: TwinEncoder) -> TwinEncoder:
    return copy.deepcopy(_cnn_gru)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip"))
