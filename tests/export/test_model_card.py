"""``--model-card``: a Hugging Face card from what is on disk: the model, its run, an evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.cli import main
from retrieval.export import ExportOptions, export_model


def _front_matter(card: str) -> dict[str, str]:
    assert card.startswith("---\n")
    block = card.split("---\n")[1]
    out = {}
    for line in block.splitlines():
        if ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            out[key.strip()] = value.split("#")[0].strip()
    return out


def test_card_has_base_model_training_settings_and_the_reports_table(
    tuned_clip: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    report.mkdir()
    metrics = {"t2i/R@1": 0.5, "t2i/R@5": 0.8333, "i2t/R@1": 0.6667, "t2i/MRR": 0.61}
    (report / "metrics.json").write_text(json.dumps({"metrics": metrics, "n_images": 6, "n_texts": 6}))
    options = ExportOptions(model_card=True, report=str(report), repo_id="me/shapes-clip")
    export_model(tuned_clip, "transformers", tmp_path / "out", options)
    card = (tmp_path / "out" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert meta["license"] == "other" and "TO FILL IN" in card
    assert "# shapes-clip" in card
    assert (
        "| `t2i/R@5` | 0.8333 |" in card
        and "| `i2t/R@1` | 0.6667 |" in card
        and "6 images and 6 captions" in card
    )
    assert "| `loss` | clip |" in card and "| `model.lock_text` | False |" in card and "pairs.jsonl" in card
    assert "CLIPModel.from_pretrained('me/shapes-clip')" in card
    assert "## Intended use" in card and "## Licence" in card


def test_card_of_a_hub_base_names_it_and_open_clip_cards_show_open_clip_usage(
    tuned_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieval.model import load_model

    model = load_model(tuned_clip, device="cpu")
    model.base_model = {
        "source": "hub",
        "id": "openai/clip-vit-base-patch32",
        "revision": "abc",
        "format": "transformers",
    }
    export_model(
        model, "open_clip", tmp_path / "oc", ExportOptions(model_card=True, data_description="Six shapes.")
    )
    card = (tmp_path / "oc" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "open_clip" and meta["base_model"] == "openai/clip-vit-base-patch32"
    assert "open_clip.create_model_and_transforms('hf-hub:ORG/NAME')" in card and "Six shapes." in card
    assert "No evaluation report was given" in card
    config = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "openai/clip-vit-base-patch32"


def test_a_missing_report_is_a_clear_error(tuned_clip: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "export-model",
            str(tuned_clip),
            "--to",
            "transformers",
            "--out",
            str(tmp_path / "o"),
            "--model-card",
            "--report",
            str(tmp_path / "nowhere"),
        ]
    )
    assert code == 1
    assert "no evaluation report at" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
