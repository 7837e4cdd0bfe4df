from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.config import ModelConfig
from retrieval.data import ImageDecodeError
from retrieval.model import TwinEncoder, build_model

from support.tiny import CAPTIONS, tiny_config


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)) for i in range(n)]


def test_model_config_json_round_trip() -> None:
    config = tiny_config("vit", "transformer", use_bias=True, image_mean=(0.1, 0.2, 0.3))
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"image_towr": "cnn"})


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"embed_dim": 0}, "embed_dim must be a positive integer"),
        ({"projection": "conv"}, r"projection must be one of \['linear', 'mlp', 'none'\]"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"tokenizer": "sentencepiece"}, "tokenizer must be one of"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"unfreeze_text_layers": -1}, "unfreeze_text_layers must be >= 0"),
        ({"image_std": (0.5, 0.0, 0.5)}, "std > 0"),
    ],
)
def test_model_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_temperature_and_bias() -> None:
    model = build_model(tiny_config(), device="cpu")
    assert model.logit_scale.shape == () and math.isclose(
        model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-4
    )
    assert model.logit_bias is None
    siglip_like = build_model(tiny_config(use_bias=True, init_logit_scale=math.log(10)), device="cpu")
    assert siglip_like.logit_bias is not None and siglip_like.logit_bias.item() == -10.0
    fixed = build_model(tiny_config(learn_logit_scale=False), device="cpu")
    assert not fixed.logit_scale.requires_grad


def test_encode_images_batches_paths_and_pils(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    pics = images(5)
    pics[2].save(tmp_path / "p.png")
    inputs = [pics[0], pics[1], str(tmp_path / "p.png"), pics[3], tmp_path / "p.png"]
    whole = cnn_gru.encode_images(inputs, batch_size=64)
    chunked = cnn_gru.encode_images(inputs, batch_size=2)
    assert whole.shape == (5, 32) and whole.dtype == torch.float32 and whole.device.type == "cpu"
    assert torch.allclose(whole, chunked, atol=1e-5)  # batch size may change the conv kernels
    assert torch.allclose(whole.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(whole[2], whole[4])
    assert not whole.requires_grad
    assert cnn_gru.encode_images([]).shape == (0, 32)


def test_encode_images_raises_on_broken_path(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"x")
    with pytest.raises(ImageDecodeError):
        cnn_gru.encode_images([tmp_path / "bad.jpg"])


def test_encode_texts(cnn_gru: TwinEncoder) -> None:
    whole = cnn_gru.encode_texts(CAPTIONS)
    chunked = cnn_gru.encode_texts(CAPTIONS, batch_size=2)
    assert whole.shape == (5, 32) and whole.dtype == torch.float32
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert cnn_gru.encode_texts([]).shape == (0, 32)
    with pytest.raises(ValueError, match="list of strings"):
        cnn_gru.encode_texts("a red car")
    with pytest.raises(ValueError, match="batch_size"):
        cnn_gru.encode_texts(CAPTIONS, batch_size=0)


def test_encode_restores_training_mode(cnn_gru: TwinEncoder) -> None:
    cnn_gru.train()
    cnn_gru.encode_texts(["a"])
    assert cnn_gru.training
    cnn_gru.eval()
    cnn_gru.encode_texts(["a"])
    assert not cnn_gru.training


def test_image_transform_matches_tower(cnn_gru: TwinEncoder) -> None:
    assert cnn_gru.image_transform()(images(1)[0]).shape == (3, 32, 32)
    assert cnn_gru.image_transform(train=True)(images(1)[0]).shape == (3, 32, 32)


@pytest.mark.parametrize(
    "image_tower,text_tower,changes",
    [
        ("cnn", "gru", {}),
        ("vit", "transformer", {"use_bias": True, "tokenizer": "wordpiece"}),
        ("vit", "transformer", {"shared": True, "image_width": 32}),
    ],
)
def test_save_load_round_trip(tmp_path: Path, image_tower: str, text_tower: str, changes: dict) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(image_tower, text_tower, **changes), CAPTIONS, device="cpu")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "image_tower", "model.safetensors", "retrieval_model.json", "text_tower"]
    assert (tmp_path / "m" / "text_tower" / "tokenizer.json").is_file()
    loaded = TwinEncoder.load(tmp_path / "m", device="cpu")
    assert not loaded.training  # ready for inference
    assert loaded.config == model.config
    assert loaded.logit_scale.item() == 3.0
    pics = images(3)
    assert torch.equal(loaded.encode_images(pics), model.encode_images(pics))
    assert torch.equal(loaded.encode_texts(CAPTIONS), model.encode_texts(CAPTIONS))
    assert loaded.fingerprint() == model.fingerprint()
    info = json.loads((tmp_path / "m" / "retrieval_model.json").read_text())
    assert info["fingerprint"] == model.fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left behind


def test_save_replaces_a_model_but_not_other_folders(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    cnn_gru.save(tmp_path / "m")
    with torch.no_grad():
        cnn_gru.logit_scale.fill_(1.0)
    cnn_gru.save(tmp_path / "m")
    assert TwinEncoder.load(tmp_path / "m", device="cpu").logit_scale.item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved model"):
        cnn_gru.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    cnn_gru.save(tmp_path / "empty")


def test_load_errors(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"TwinEncoder\.save"):
        TwinEncoder.load(tmp_path)
    cnn_gru.save(tmp_path / "m")
    info = tmp_path / "m" / "retrieval_model.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "format_version": 99}))
    with pytest.raises(ValueError, match="model format 99"):
        TwinEncoder.load(tmp_path / "m")


def test_fingerprint_changes_with_weights_and_preprocessing(cnn_gru: TwinEncoder) -> None:
    before = cnn_gru.fingerprint()
    assert before == cnn_gru.fingerprint() and len(before) == 64
    with torch.no_grad():
        next(cnn_gru.image_tower.parameters())[0].view(-1)[0] += 1e-3
    assert cnn_gru.fingerprint() != before
    other = build_model(cnn_gru.config.replace(image_mean=(0.0, 0.0, 0.0)), CAPTIONS, device="cpu")
    other.load_state_dict(cnn_gru.state_dict())
    assert other.fingerprint() != cnn_gru.fingerprint()


def test_fingerprint_is_stable_across_processes(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    cnn_gru.save(tmp_path / "m")
    code = f"from retrieval.model import TwinEncoder; print(TwinEncoder.load({str(tmp_path / 'm')!r}).fingerprint())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == cnn_gru.fingerprint()


def test_from_pretrained_reads_a_saved_folder(cnn_gru: TwinEncoder, tmp_path: Path) -> None:
    cnn_gru.save(tmp_path / "m")
    assert TwinEncoder.from_pretrained(tmp_path / "m", device="cpu").fingerprint() == cnn_gru.fingerprint()


def test_build_model_rejects_non_config() -> None:
    with pytest.raises(ValueError, match="expects a ModelConfig"):
        build_model({"image_tower": "cnn"})  # type: ignore[arg-type]


def test_package_root_is_lazy() -> None:
    code = (
        "import sys, retrieval, retrieval.config\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert retrieval.TwinEncoder.__name__ == 'TwinEncoder' and callable(retrieval.read_pairs)\n"
        "assert 'transformers' not in sys.modules  # only hf towers import it\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_match_head_is_saved_beside_the_model_and_keeps_the_fingerprint(cnn_gru, tmp_path):
    from PIL import Image

    from retrieval.match import MatchHead

    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    with pytest.raises(ValueError, match="no match head"):
        cnn_gru.match(images, ["a red square", "a blue square"])
    before = cnn_gru.fingerprint()
    head = MatchHead(cnn_gru.embed_dim, hidden=8)
    cnn_gru.attach_match_head(head)
    assert cnn_gru.fingerprint() == before  # a head does not change what the embeddings are
    probs = cnn_gru.match(images, ["a red square", "a blue square"])
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()
    cnn_gru.save(tmp_path / "m")
    loaded = TwinEncoder.load(tmp_path / "m", device="cpu")
    assert (tmp_path / "m" / "match_head").is_dir() and loaded.fingerprint() == before
    np.testing.assert_allclose(loaded.match(images, ["a red square", "a blue square"]), probs, rtol=1e-5)
    with pytest.raises(ValueError, match="as many images as texts"):
        loaded.match(images, ["one"])
    with pytest.raises(ValueError, match="dim"):
        loaded.attach_match_head(MatchHead(cnn_gru.embed_dim + 1))
