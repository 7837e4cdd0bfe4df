"""``--runtime`` and ``--no-feature-cache`` on the commands that encode, through ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.cli import build_parser, main
from retrieval.cli.options import given
from retrieval.config import DemoConfig, EmbedConfig, EvalConfig, ServeConfig
from retrieval.encoding import FeatureCache
from retrieval.model import build_model

from support.tiny import CAPTIONS, tiny_config


def test_every_encoding_command_takes_a_runtime():
    parse = build_parser().parse_args
    args = parse(["embed", "src", "--model", "m", "--out", "o", "--runtime", "torch", "--no-feature-cache"])
    assert given(args, EmbedConfig) == {"runtime": "torch", "feature_cache": False}
    args = parse(["eval", "data", "--model", "m", "--runtime", "onnx", "--no-feature-cache"])
    assert given(args, EvalConfig) == {"runtime": "onnx", "feature_cache": False}
    assert given(parse(["serve", "coll", "--runtime", "torch"]), ServeConfig) == {"runtime": "torch"}
    assert given(parse(["demo", "--runtime", "torch"]), DemoConfig) == {"runtime": "torch"}
    assert parse(["search", "coll", "a query", "--runtime", "onnx"]).runtime == "onnx"
    assert parse(["search", "coll", "a query"]).runtime == ServeConfig().runtime == "auto"
    with pytest.raises(SystemExit):
        parse(["embed", "src", "--model", "m", "--out", "o", "--runtime", "tensorrt"])


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(CAPTIONS * 2):
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)).save(tmp_path / name)
        rows.append({"image": name, "caption": caption})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    torch.manual_seed(321)
    build_model(tiny_config(), CAPTIONS, device="cpu").save(tmp_path / "model")
    return manifest, tmp_path / "model"


def test_embed_search_and_eval_on_onnxruntime(corpus, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    manifest, model = corpus
    base = ["--model", str(model), "--no-progress"]
    assert main(["embed", str(manifest), "--out", str(tmp_path / "c1"), *base, "--runtime", "torch"]) == 0
    captions = {json.loads(line)["caption"] for line in manifest.read_text(encoding="utf-8").splitlines()}
    # the images' and the captions' tower features, for eval to read
    assert FeatureCache().stats()[0] == 10 + len(captions)
    assert not (model / "onnx").exists()
    # the other runtime on the same collection: the model's fingerprint does not change with it
    assert main(["embed", str(manifest), "--out", str(tmp_path / "c1"), *base, "--runtime", "onnx"]) == 0
    assert main(["search", str(tmp_path / "c1"), "a red car", "--runtime", "onnx", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert hits and len({hit["id"] for hit in hits}) == len(hits)
    # nothing was left to embed: the query's text tower is the only one that ran, beside the model
    assert [p.parent.name[:5] for p in (model / "onnx").glob("*/tower.onnx")] == ["text-"]
    out = tmp_path / "report"
    assert (
        main(["eval", str(manifest), *base, "--runtime", "onnx", "--no-feature-cache", "--out", str(out)])
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["metrics"]["t2i/R@1"] >= 0
    assert len(list((model / "onnx").glob("*/tower.onnx"))) == 2  # the image tower's graph too
