"""Export to transformers: fine-tuned CLIP / SigLIP models come back from plain transformers (and
sentence-transformers) with the toolkit's embeddings; other architectures are refused, naming ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.cli import main
from retrieval.export import EXPORT_INFO, TOLERANCES, ExportError, ExportOptions, export_model
from retrieval.export.check import sample_images
from retrieval.model import build_model, load_model

from support.tiny import CAPTIONS as TINY_CAPTIONS
from support.tiny import tiny_config

TEXTS = ["a red circle", "a blue square", "green"]


def _plain_transformers(folder: Path, padding: str | bool):
    """Embeddings as a transformers user computes them: AutoModel, AutoProcessor, no toolkit code."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(
        text=TEXTS, images=sample_images(), return_tensors="pt", padding=padding, truncation=True
    )
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        ).pooler_output
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


@pytest.mark.parametrize(("which", "padding"), [("clip", True), ("siglip", "max_length")])
def test_a_fine_tuned_model_loads_in_plain_transformers_with_equal_embeddings(
    which: str, padding: str | bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tuned = request.getfixturevalue(f"tuned_{which}")
    base = request.getfixturevalue(f"{which}_dir")
    model = load_model(tuned, device="cpu")
    result = export_model(tuned, "transformers", tmp_path / "out")
    assert result.tolerance == TOLERANCES["transformers"] == 1e-5
    assert max(result.max_difference.values()) <= 1e-5

    image, text = _plain_transformers(tmp_path / "out", padding)
    assert torch.allclose(image, model.encode_images(sample_images()), atol=1e-5)
    assert torch.allclose(text, model.encode_texts(TEXTS), atol=1e-5)
    # it is the fine-tuned model, not the checkpoint it started from
    start, _ = _plain_transformers(base, padding)
    assert (start - image).abs().max() > 1e-4

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == which
    info = json.loads((tmp_path / "out" / EXPORT_INFO).read_text())
    assert info["fingerprint"] == model.fingerprint() and info["base_model"]["format"] == "transformers"
    # the export is a transformers checkpoint the toolkit names like any other
    again = load_model(tmp_path / "out", device="cpu")
    assert again.source.kind == "transformers"
    assert torch.allclose(again.encode_texts(TEXTS), model.encode_texts(TEXTS), atol=1e-5)
    if which == "siglip":
        assert (
            json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["image_processor_type"]
            == "SiglipImageProcessor"
        )


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_the_export_loads_in_sentence_transformers_with_unit_vectors(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = load_model(request.getfixturevalue(f"tuned_{which}"), device="cpu")
    export_model(model, "transformers", tmp_path / "out")
    encoder = st.SentenceTransformer(str(tmp_path / "out"), device="cpu")
    texts = encoder.encode(TEXTS, convert_to_tensor=True)
    images = encoder.encode(sample_images(), convert_to_tensor=True)
    assert torch.allclose(texts.cpu(), model.encode_texts(TEXTS), atol=1e-5)
    assert torch.allclose(images.cpu(), model.encode_images(sample_images()), atol=1e-5)


def test_a_linear_head_on_clip_towers_is_folded_into_clip_projections(clip_dir: Path, tmp_path: Path) -> None:
    config = tiny_config().replace(
        image_tower=f"hf:{clip_dir}",
        text_tower=f"hf:{clip_dir}",
        projection="linear",
        embed_dim=8,
        pooling="pooler",
        projection_dropout=0.1,
    )
    model = build_model(config, device="cpu").eval()
    result = export_model(model, "transformers", tmp_path / "out")
    assert max(result.max_difference.values()) <= 1e-5
    assert json.loads((tmp_path / "out" / "config.json").read_text())["projection_dim"] == 8


def test_toolkit_architectures_are_refused_naming_onnx(tmp_path: Path, clip_dir: Path) -> None:
    scratch = build_model(tiny_config(), TINY_CAPTIONS, device="cpu")
    with pytest.raises(ExportError, match=r"image tower 'cnn', text tower 'gru'.*--to onnx"):
        export_model(scratch, "transformers", tmp_path / "a")
    mlp = build_model(
        tiny_config().replace(
            image_tower=f"hf:{clip_dir}", text_tower=f"hf:{clip_dir}", projection="mlp", pooling="pooler"
        ),
        device="cpu",
    )
    with pytest.raises(ExportError, match=r"image projection head.*--to onnx"):
        export_model(mlp, "transformers", tmp_path / "b")
    mean = build_model(
        tiny_config().replace(
            image_tower=f"hf:{clip_dir}",
            text_tower=f"hf:{clip_dir}",
            projection="none",
            embed_dim=24,
            pooling="mean",
        ),
        device="cpu",
    )
    with pytest.raises(ExportError, match=r"pools its clip text tower by 'mean'.*--to onnx"):
        export_model(mean, "transformers", tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_onnx_export_answers_with_the_models_unit_vectors(tmp_path: Path, tuned_clip: Path) -> None:
    """Every architecture exports to ONNX: two graphs (tower, head, normalisation) that ONNX Runtime
    runs from the preprocessing recorded beside them, giving the toolkit's vectors."""
    import onnxruntime as ort
    from PIL import Image

    scratch = build_model(tiny_config(), TINY_CAPTIONS, device="cpu")
    for name, model in (("clip", load_model(tuned_clip, device="cpu")), ("scratch", scratch)):
        result = export_model(model, "onnx", tmp_path / name)
        assert max(result.max_difference.values()) <= 1e-4
        image_meta = json.loads((tmp_path / name / "image" / "preprocess.json").read_text())
        text_meta = json.loads((tmp_path / name / "text" / "preprocess.json").read_text())
        assert image_meta["output_dim"] == model.embed_dim and "preprocess" in image_meta
        assert text_meta["inputs"] == {
            "input_ids": ["batch", "length"],
            "attention_mask": ["batch", "length"],
        }
        # a consumer needs only the files: pixels made by the recorded preprocessing, ids by the tokenizer
        images = [Image.new("RGB", (40 + 9 * i, 31), (30 * i, 200, 90)) for i in range(3)]
        pixels = torch.stack([model.image_transform(False)(im) for im in images]).numpy()
        session = ort.InferenceSession(str(tmp_path / name / "image" / "tower.onnx"))
        got = session.run(["features"], {"pixel_values": pixels})[0]  # [3, D], batch of 3 (traced: 2)
        want = model.encode_images(images).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        tokens = model.tokenize(["a red car", "two dogs on a sunny beach", "x"])
        session = ort.InferenceSession(str(tmp_path / name / "text" / "tower.onnx"))
        feeds = {"input_ids": tokens["input_ids"].numpy(), "attention_mask": tokens["attention_mask"].numpy()}
        got = session.run(["features"], feeds)[0]
        want = model.encode_texts(["a red car", "two dogs on a sunny beach", "x"]).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="the onnx target has none"):
        export_model(scratch, "onnx", tmp_path / "card", ExportOptions(model_card=True))
    with pytest.raises(
        ValueError, match=r"unknown export target 'tflite'.*\['onnx', 'open_clip', 'transformers'\]"
    ):
        export_model(tuned_clip, "tflite", tmp_path / "x")


def test_out_must_be_new_empty_or_an_earlier_export(tmp_path: Path, tuned_clip: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier export"):
        export_model(tuned_clip, "transformers", busy)
    assert (busy / "notes.txt").read_text() == "mine"
    export_model(tuned_clip, "transformers", tmp_path / "out")
    export_model(tuned_clip, "transformers", tmp_path / "out")  # replaced whole
    assert (tmp_path / "out" / EXPORT_INFO).is_file()


def test_cli_fine_tune_with_init_then_export(clip_dir: Path, pairs: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(pairs),
                "max_steps=1",
                "batch_size=4",
                "device=cpu",
                "--init",
                str(clip_dir),
                "--out",
                str(run),
                "--no-progress",
                "--no-auto-val",
            ]
        )
        == 0
    )
    assert (
        main(["export-model", str(run / "final"), "--to", "transformers", "--out", str(tmp_path / "hf")]) == 0
    )
    assert "exported to" in capsys.readouterr().out
    assert main(["export-model", str(run / "final"), "--to", "onnx", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "image" / "tower.onnx").is_file() and (
        tmp_path / "o" / "text" / "tower.onnx"
    ).is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "export-model",
                str(run / "final"),
                "--to",
                "transformers",
                "--out",
                str(tmp_path / "x"),
                "--report",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "add --model-card" in capsys.readouterr().err
