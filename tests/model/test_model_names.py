"""One model name everywhere: toolkit folders, transformers CLIP/SigLIP folders and hub ids resolved
from a Hugging Face cache laid out in the test (the real huggingface_hub code path, no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from retrieval.model import TwinEncoder, build_model, load_model
from retrieval.pretrained import resolve_model

from support.hf import save_in_hub_cache
from support.tiny import CAPTIONS, tiny_config

REVISION = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a red car", "the small dog"]


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_each_kind_of_folder_is_told_apart(clip_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    build_model(tiny_config(), CAPTIONS, device="cpu").save(saved)
    assert resolve_model(saved).kind == "toolkit"
    assert resolve_model(str(clip_dir)).kind == "transformers"
    toolkit = load_model(saved, device="cpu")
    assert toolkit.source is not None and toolkit.source.path == saved.resolve()
    clip = load_model(clip_dir, device="cpu")
    direct = TwinEncoder.from_pretrained(clip_dir, device="cpu")
    assert torch.equal(clip.encode_texts(TEXTS), direct.encode_texts(TEXTS))

    info = clip.source.info()
    weights = hashlib.sha256(b"\0model.safetensors\0" + (clip_dir / "model.safetensors").read_bytes())
    assert info == {
        "source": "folder",
        "path": str(clip_dir.resolve()),
        "weights_sha256": weights.hexdigest(),
        "format": "transformers",
    }


def test_a_folder_of_another_kind_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no config\.json: expected a model saved by the toolkit"):
        load_model(tmp_path / "empty")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match=r"no model\.safetensors.*transformers CLIP/SigLIP"):
        load_model(tmp_path / "half")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' checkpoint, not a two-tower model"):
        load_model(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id"):
        load_model("tinyclip")  # no folder of that name, and hub ids are org/name


def test_hub_id_resolves_from_the_cache_offline(clip_dir: Path, hf_home: Path) -> None:
    snapshot = save_in_hub_cache(clip_dir, hf_home, "tiny-org/tiny-clip", REVISION)
    model = load_model("tiny-org/tiny-clip", device="cpu")
    source = model.source
    assert source is not None and source.path == snapshot
    assert source.info() == {
        "source": "hub",
        "id": "tiny-org/tiny-clip",
        "revision": REVISION,
        "requested_revision": "main",
        "format": "transformers",
    }
    assert source.name == f"tiny-org/tiny-clip@{REVISION}"
    assert model.config.image_tower == "hf:tiny-org/tiny-clip"
    reference = load_model(clip_dir, device="cpu")
    assert model.fingerprint() == reference.fingerprint()
    assert torch.equal(model.encode_texts(TEXTS), reference.encode_texts(TEXTS))
    pinned = load_model(f"tiny-org/tiny-clip@{REVISION}", device="cpu")
    assert pinned.source.info()["revision"] == REVISION and "requested_revision" not in pinned.source.info()


def test_offline_error_names_the_id_the_cache_and_the_command(hf_home: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_model("tiny-org/not-cached@v2")
    message = str(caught.value)
    assert "'tiny-org/not-cached@v2'" in message and str(hf_home / "hub") in message
    assert "HF_HUB_OFFLINE is set" in message and "hf download tiny-org/not-cached --revision v2" in message


def test_a_fine_tuned_model_remembers_its_base(clip_dir: Path, tmp_path: Path) -> None:
    model = load_model(clip_dir, device="cpu")
    model.save(tmp_path / "ft")
    loaded = load_model(tmp_path / "ft", device="cpu")
    assert loaded.base_model == model.source.info()
    info = loaded.source.info()
    assert info["format"] == "toolkit" and info["base_model"]["path"] == str(clip_dir.resolve())


def test_without_offline_mode_a_cached_model_still_loads_when_the_hub_is_unreachable(
    clip_dir: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    save_in_hub_cache(clip_dir, hf_home, "tiny-org/tiny-clip", REVISION)
    assert load_model("tiny-org/tiny-clip", device="cpu").source.revision == REVISION
    with pytest.raises(FileNotFoundError, match="could not be reached") as caught:
        load_model("tiny-org/not-cached")
    assert str(hf_home / "hub") in str(caught.value) and "hf download tiny-org/not-cached" in str(
        caught.value
    )
