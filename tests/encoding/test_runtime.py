"""Towers on ONNX Runtime: every tower kind exported, checked and run equal to torch; the fallback of
towers that cannot be exported; the choice "auto" makes; graphs found again, never stale."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnx", reason="onnx is not installed")

from retrieval import encoding
from retrieval.encoding import towers
from retrieval.export.onnx import ATOL, RTOL, ExportError, export_tower
from retrieval.model import build_model, load_model
from retrieval.towers import CNNImageTower
from retrieval.towers.base import tower_fingerprint

from support.hf import save_tiny_bert
from support.tiny import CAPTIONS, tiny_config

TEXTS = [*CAPTIONS, "", "a very long caption " * 6, "émoji 🙂 and ünïcode"]


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Unit vectors from ONNX Runtime and torch: equal within the export tolerance (carried through
    a head and a normalisation, so a little looser)."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=10 * RTOL, atol=10 * ATOL))


def _model(name, tmp_path):
    from support.hf import save_tiny_clip

    if name == "cnn+gru":
        return build_model(tiny_config("cnn", "gru"), CAPTIONS, device="cpu")
    if name == "vit+transformer":
        return build_model(tiny_config("vit", "transformer"), CAPTIONS, device="cpu")
    if name == "clip":
        return load_model(str(save_tiny_clip(tmp_path / "clip")), device="cpu")
    bert = save_tiny_bert(tmp_path / "bert")  # EfficientNet-Lite0 (its ImageNet weights) at 64 px + BERT
    colour = 4 if name.endswith("+colour") else 0  # with the colour histogram the default recipe adds
    words = name.endswith("+words")  # with the word part of the text tower the default recipe adds
    regions = 2 if name.endswith("+regions") else 0  # with the image tower's region part
    config = tiny_config(
        "efficientnet-lite0:64", f"hf:{bert}", colour_levels=colour, text_words=words, image_regions=regions
    )
    return build_model(config, CAPTIONS, device="cpu")


@pytest.mark.parametrize(
    "name",
    [
        "cnn+gru",
        "vit+transformer",
        "clip",
        "efficientnet-lite0+bert",
        "efficientnet-lite0+bert+colour",
        "efficientnet-lite0+bert+words",
        "efficientnet-lite0+bert+regions",
    ],
)
def test_every_tower_kind_runs_on_onnxruntime_equal_to_torch(name, tmp_path, image_files):
    torch.manual_seed(0)
    model = _model(name, tmp_path).eval()
    for side in ("image", "text"):
        runner = towers.tower_runner(model, side, "onnx", torch.device("cpu"))
        # PyTorch's MultiheadAttention traces with the sample's length frozen in: the export check
        # catches it and the scratch transformer text tower runs on torch (the vectors below agree)
        expected = (name, side) != ("vit+transformer", "text")
        assert (runner is not None) == expected, (name, side)
    onnx_img = encoding.encode_images(model, image_files, batch_size=4, runtime="onnx").vectors
    torch_img = encoding.encode_images(model, image_files, batch_size=4, runtime="torch").vectors
    assert _close(onnx_img, torch_img)
    onnx_txt = encoding.encode_texts(model, TEXTS, batch_size=3, runtime="onnx").vectors
    torch_txt = encoding.encode_texts(model, TEXTS, batch_size=3, runtime="torch").vectors
    assert _close(onnx_txt, torch_txt)
    assert torch.allclose(onnx_img.norm(dim=-1), torch.ones(len(image_files)), atol=1e-5)


def test_the_transformer_optimizer_keeps_a_bert_tower_equal(tmp_path):
    """ONNX Runtime's transformer optimizer (off by default) on a BERT-like tower: fused, still checked."""
    model = build_model(tiny_config("cnn", f"hf:{save_tiny_bert(tmp_path / 'bert')}"), CAPTIONS, device="cpu")
    tower = model.text_tower.eval()
    graph = export_tower(tower, "text", tmp_path / "text", tower_fingerprint(tower), optimize=True)
    assert graph.optimized and graph.path.name == "tower.opt.onnx" and graph.max_abs_diff <= ATOL
    plain = export_tower(tower, "text", tmp_path / "plain", tower_fingerprint(tower), optimize=False)
    assert not plain.optimized and plain.path.name == "tower.onnx"


def test_the_sidecar_records_preprocessing_tolerance_and_tokenizer(tmp_path):
    model = build_model(tiny_config("cnn", "gru"), CAPTIONS, device="cpu").eval()
    image = export_tower(model.image_tower, "image", tmp_path / "image", tower_fingerprint(model.image_tower))
    meta = image.preprocess
    assert meta["preprocess"]["size"] == 32 and len(meta["preprocess"]["mean"]) == 3
    assert meta["inputs"] == {"pixel_values": ["batch", 3, 32, 32]}
    assert meta["tolerance"] == {"rtol": RTOL, "atol": ATOL} and meta["max_abs_diff"] <= ATOL
    text = export_tower(model.text_tower, "text", tmp_path / "text", tower_fingerprint(model.text_tower))
    assert text.preprocess["preprocess"]["tokenizer_files"] == ["tokenizer.json"]
    assert (tmp_path / "text" / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "text" / "preprocess.json").read_text())["output_dim"] == 32


class _UnexportableTower(CNNImageTower):
    """A tower using an operation ONNX has no counterpart for (the Bessel function I0)."""

    def forward(self, pixel_values):
        return torch.special.i0(super().forward(pixel_values))


def test_a_tower_that_cannot_export_falls_back_to_torch_with_one_message(tmp_path, image_files, caplog):
    torch.manual_seed(0)
    model = build_model(tiny_config(), CAPTIONS, device="cpu").eval()
    tower = _UnexportableTower(32, 16, 2, (0.5,) * 3, (0.25,) * 3)
    tower.load_state_dict(model.image_tower.state_dict())
    model.image_tower = tower
    with pytest.raises(ExportError, match=r"cannot be traced.*i0"):
        export_tower(tower, "image", tmp_path / "direct", tower_fingerprint(tower))
    reference = encoding.encode_images(model, image_files, runtime="torch").vectors
    with caplog.at_level(logging.WARNING, logger="retrieval.encoding.towers"):
        first = encoding.encode_images(model, image_files, runtime="onnx").vectors
        again = encoding.encode_images(model, image_files, runtime="onnx").vectors
    messages = [r.getMessage() for r in caplog.records if "runs on torch" in r.getMessage()]
    assert len(messages) == 1 and "_UnexportableTower" in messages[0]
    assert torch.equal(first, reference) and torch.equal(again, reference)


def test_auto_picks_onnxruntime_on_the_cpu_for_towers_worth_it(monkeypatch):
    model = build_model(tiny_config(), CAPTIONS, device="cpu").eval()
    cpu = torch.device("cpu")
    assert towers.tower_runner(model, "image", "auto", cpu) is None  # a tiny tower stays on torch
    assert towers.tower_runner(model, "image", "torch", cpu) is None
    monkeypatch.setattr(towers, "AUTO_MIN_PARAMETERS", 0)
    assert towers.tower_runner(model, "image", "auto", cpu) is not None
    model.runtime = "auto"  # the model's own choice when the call names none
    assert towers.tower_runner(model, "text", None, cpu) is not None
    # CUDA keeps torch unless ONNX Runtime has its CUDA provider (none in this CPU build)
    assert towers._provider("auto", torch.device("cuda")) is None
    # without onnxruntime: auto is torch, onnx a clear error
    monkeypatch.setattr("retrieval.export.onnx.onnxruntime_available", lambda: False)
    towers.forget(model)
    assert towers.tower_runner(model, "image", "auto", cpu) is None
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        towers.tower_runner(model, "image", "onnx", cpu)
    with pytest.raises(ValueError, match="unknown runtime 'fast'"):
        encoding.encode_texts(model, CAPTIONS, runtime="fast")


def test_graphs_are_exported_once_beside_the_model_and_found_again(tmp_path, image_files, monkeypatch):
    torch.manual_seed(123)  # weights no other test exports (graphs are shared through the cache)
    build_model(tiny_config(), CAPTIONS, device="cpu").save(tmp_path / "model")
    import retrieval.export.onnx as exporter

    calls = []
    real = exporter.export_tower

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "export_tower", counting)
    first = load_model(tmp_path / "model", device="cpu", runtime="onnx")
    a = encoding.encode_images(first, image_files).vectors
    assert calls == ["image"]
    assert len(list((tmp_path / "model" / "onnx").glob("image-*/tower.onnx"))) == 1
    second = load_model(tmp_path / "model", device="cpu", runtime="onnx")  # another process would do this
    b = encoding.encode_images(second, image_files).vectors
    assert calls == ["image"] and torch.equal(a, b)
    # the fingerprint of the model (what a collection records) does not depend on the runtime
    assert first.fingerprint() == load_model(tmp_path / "model", device="cpu", runtime="torch").fingerprint()


def test_a_read_only_model_folder_exports_into_the_cache(tmp_path, image_files, monkeypatch):
    torch.manual_seed(124)
    build_model(tiny_config(), CAPTIONS, device="cpu").save(tmp_path / "model")
    model = load_model(tmp_path / "model", device="cpu", runtime="onnx")
    monkeypatch.setattr(towers.os, "access", lambda path, mode: False)  # as for a pretrained package
    searched, target = towers.graph_roots(model)
    assert target == searched[-1] and "onnx" in str(target) and tmp_path not in target.parents
    encoding.encode_images(model, image_files)
    assert not (tmp_path / "model" / "onnx").exists()


def test_a_model_folder_that_refuses_the_write_falls_back_to_the_cache(tmp_path, image_files):
    torch.manual_seed(125)
    build_model(tiny_config(), CAPTIONS, device="cpu").save(tmp_path / "model")
    (tmp_path / "model" / "onnx").write_text("a file where the graphs' folder would go")
    model = load_model(tmp_path / "model", device="cpu", runtime="onnx")
    assert towers.tower_runner(model, "image", None, torch.device("cpu")) is not None
    got = encoding.encode_images(model, image_files).vectors
    assert _close(got, encoding.encode_images(model, image_files, runtime="torch").vectors)


def test_a_tower_changed_in_place_never_runs_a_stale_graph(image_files):
    torch.manual_seed(0)
    model = build_model(tiny_config(), CAPTIONS, device="cpu").eval()
    before = encoding.encode_images(model, image_files, runtime="onnx").vectors
    with torch.no_grad():
        for p in model.image_tower.parameters():
            p.mul_(1.5).add_(0.01)  # an optimizer step would do the same, in place
    after = encoding.encode_images(model, image_files, runtime="onnx").vectors
    reference = encoding.encode_images(model, image_files, runtime="torch").vectors
    assert not _close(before, after)
    assert _close(after, reference)
