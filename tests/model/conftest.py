"""Tiny models shared by the model tests (built once per session, handed out as deep copies)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from retrieval.model import TwinEncoder, build_model

from support.hf import save_tiny_clip, save_tiny_siglip
from support.tiny import CAPTIONS, tiny_config


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
