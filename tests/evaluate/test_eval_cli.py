"""The real tiny TwinEncoder through evaluate_model and ``retrieval eval`` (main(argv))."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from retrieval.cli import main
from retrieval.data import read_pairs
from retrieval.evaluate import evaluate_model, retrieval_metrics_from_embeddings, write_report

from support.tiny import CNN_GRU

COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60), "black": (10, 10, 10)}
SHAPES = ("square", "bar")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A manifest of 8 images with 2 captions each and a ``label`` column; a saved tiny model."""
    from retrieval.model import build_model

    root = tmp_path_factory.mktemp("tiny-eval")
    rng = np.random.default_rng(0)
    rows = []
    for color, rgb in COLORS.items():
        for shape in SHAPES:
            name = f"{color}_{shape}.png"
            pixels = np.clip(np.array(rgb) + rng.normal(0, 60, size=(32, 32, 3)), 0, 255)  # distinct images
            Image.fromarray(pixels.astype(np.uint8)).save(root / name)
            for caption in (f"a {color} {shape}", f"something {color}"):
                rows.append({"image": name, "caption": caption, "label": color, "id": f"{color}-{shape}"})
    manifest = root / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = build_model(CNN_GRU, captions=[r["caption"] for r in rows], device="cpu")
    model.save(root / "model")
    return manifest, root / "model", model


def test_real_model_metrics_match_its_embeddings(dataset, tmp_path):
    manifest, _, model = dataset
    pairs = read_pairs(manifest, id_column="id")
    result = evaluate_model(model, pairs, ks=(1, 3), batch_size=5)
    write_report(result, tmp_path / "r")
    text = model.encode_texts(pairs.captions(), batch_size=5)
    image = model.encode_images(pairs.images(), batch_size=5)
    want = retrieval_metrics_from_embeddings(text, image, pairs.text_to_image(), ks=(1, 3))
    assert result.metrics == pytest.approx(want, abs=1e-6)
    assert result.fingerprint == model.fingerprint()
    assert (
        json.loads((tmp_path / "r" / "metrics.json").read_text())["model_fingerprint"] == model.fingerprint()
    )


def test_cli_smoke(dataset, tmp_path, capsys):
    manifest, model_dir, model = dataset
    from indexes import Collection

    pairs = read_pairs(manifest, id_column="id")
    with Collection.create(tmp_path / "coll", dim=32, index="Flat", fingerprint=model.fingerprint()) as coll:
        coll.add(model.encode_images(pairs.images()).numpy(), [{"image_id": k} for k in pairs.image_ids()])
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_dir), str(manifest), "--id-column", "id", "--out", str(out),
            "-k", "1", "5", "--zero-shot-labels", "label", "--collection", str(tmp_path / "coll"),
            "--samples", "3", "--index-filter", "post", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "16 captions, 8 images" in printed and f"report: {out}" in printed and "zero-shot" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["ks"] == [1, 5]
    assert "index/t2i/R@5" in summary["metrics"] and "zeroshot/top1" in summary["metrics"]
    assert summary["zero_shot"]["classes"] == sorted(COLORS)
    with open(out / "queries_t2i.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 16


def test_cli_reports_user_errors(dataset, tmp_path, capsys):
    manifest, model_dir, _ = dataset
    argv = ["eval", "--model", str(model_dir), str(manifest), "--out", str(tmp_path / "r"), "-k", "0"]
    assert main(argv) == 1
    assert "ks must be positive" in capsys.readouterr().err


def test_cli_hubness_with_a_query_bank(dataset, tmp_path, capsys):
    manifest, model_dir, model = dataset
    from retrieval.search import build_query_bank

    bank_path = tmp_path / "bank.querybank.npz"
    build_query_bank(model, read_pairs(manifest, id_column="id"), max_queries=6).save(bank_path)
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_dir), str(manifest), "--id-column", "id", "--out", str(out),
            "-k", "1", "5", "--hubness", "csls", "--query-bank", str(bank_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "hub t2i R@K" in capsys.readouterr().out
    assert "hub/i2t/R@5" in json.loads((out / "metrics.json").read_text())["metrics"]
    assert main([*argv[:-3], "--no-progress"]) == 1  # --hubness without a bank
    assert "needs a query bank" in capsys.readouterr().err
    assert main([*argv, "--expand"]) == 0  # the bank's pairs expand the queries: exp/ metrics beside hub/
    assert "exp t2i R@K" in capsys.readouterr().out
    assert "exp/t2i/R@5" in json.loads((out / "metrics.json").read_text())["metrics"]
    assert "## With query expansion" in (out / "report.md").read_text()


def test_cli_classify_and_match_smoke(dataset, tmp_path, capsys):
    import shutil

    manifest, model_dir, _ = dataset
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    clf = tmp_path / "clf"
    argv = ["classify", "train", str(manifest), "--model", str(model), "--out", str(clf),
            "--label-column", "label", "--fusion", "concat", "--epochs", "3"]  # fmt: skip
    assert main(argv) == 0
    assert main(["classify", "eval", str(manifest), "--model", str(model), "--classifier", str(clf),
                 "--out", str(tmp_path / "report")]) == 0  # fmt: skip
    assert (tmp_path / "report" / "confusion_both.png").is_file()
    assert main(["classify", "predict", "--model", str(model), "--classifier", str(clf),
                 "--text", "a red circle", "--top", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "report:" in printed
    assert main(["match", "train", str(manifest), "--model", str(model), "--val", str(manifest),
                 "--epochs", "2", "--negatives", "2"]) == 0  # fmt: skip
    assert (model / "match_head").is_dir() and "temperature" in capsys.readouterr().out
    argv = ["eval", "--model", str(model), str(manifest), "--id-column", "id", "--out", str(tmp_path / "r2"),
            "--rerank", "3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "r2" / "reliability.png").is_file()
