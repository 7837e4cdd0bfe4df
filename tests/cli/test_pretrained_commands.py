"""Pretrained CLIP / SigLIP checkpoints named on the command line: embed, info, search, eval, serve
and train --init, from transformers folders and from a hub id in a Hugging Face cache (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.cli import main
from retrieval.model import load_model

from support.corpora import write_corpus
from support.fixtures import one_torch_thread  # noqa: F401  (autouse)
from support.hf import save_in_hub_cache, save_tiny_clip, save_tiny_siglip
from support.keywords import COLORS, OBJECTS

REVISION = "1111111111111111111111111111111111111111"
OTHER_REVISION = "2222222222222222222222222222222222222222"
HUB_ID = "tiny-org/tiny-clip"
TEXTS = [f"a {c} {o}" for c in COLORS for o in OBJECTS]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rows = write_corpus(root / "images", 12)
    for row in rows:
        row["label"] = row["caption"].split()[1]  # the colour
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "clip": save_tiny_clip(root / "clip", texts=TEXTS),
        "siglip": save_tiny_siglip(root / "siglip", texts=TEXTS),
    }


@pytest.fixture
def hf_home(tmp_path, monkeypatch, checkpoints) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_in_hub_cache(checkpoints["clip"], home, HUB_ID, REVISION)
    # another revision of the same id with other weights (refs/main keeps pointing at REVISION)
    save_in_hub_cache(checkpoints["siglip"], home, HUB_ID, OTHER_REVISION)
    (home / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "refs" / "main").write_text(REVISION)
    return home


def _info(collection: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(collection)]) == 0
    return json.loads(capsys.readouterr().out)


def _serve_search(collection: Path, model: str | None = None) -> list[dict]:
    from fastapi.testclient import TestClient

    from retrieval.config import ServeConfig
    from retrieval.serve import create_app

    config = ServeConfig(collections={"c": str(collection)}, model=model, reload_interval=0)
    with TestClient(create_app(config), base_url="http://localhost") as client:
        response = client.post("/collections/c/search/text", json={"text": "a red car", "k": 3})
        assert response.status_code == 200, response.text
        return response.json()["hits"]


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_every_command_takes_a_transformers_folder(which, checkpoints, manifest, tmp_path, capsys):
    folder = checkpoints[which]
    coll = tmp_path / "coll"
    assert main(["embed", str(manifest), "--model", str(folder), "--out", str(coll), "--no-progress"]) == 0
    info = _info(coll, capsys)
    assert info["model_info"] == {
        **load_model(folder, device="cpu").source.info(),
        "model": str(folder.resolve()),  # the name search and serve load it by
        "model_dir": str(folder.resolve()),
    }
    assert info["model_info"]["source"] == "folder" and info["model_info"]["format"] == "transformers"

    assert main(["search", str(coll), "a red car", "-k", "3", "--json"]) == 0  # the recorded model
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["metadata"]["modality"] == "image" for h in hits)
    other = checkpoints["siglip" if which == "clip" else "clip"]
    assert main(["search", str(coll), "a red car", "--model", str(other)]) == 1
    assert "was made by the model with fingerprint" in capsys.readouterr().err

    report = tmp_path / "report"
    argv = ["eval", str(manifest), "--model", str(folder), "--zero-shot-labels", "label", "--out", str(report),
            "--samples", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert "t2i/R@1" in metrics["metrics"] and "zeroshot/top1" in metrics["metrics"]
    assert metrics["model_info"] == load_model(folder, device="cpu").source.info()
    assert f"({folder.resolve()})" in (report / "report.md").read_text()
    assert len(_serve_search(coll)) == 3


def test_a_hub_id_works_everywhere_offline(hf_home, checkpoints, manifest, tmp_path, capsys):
    coll = tmp_path / "coll"
    assert main(["embed", str(manifest), "--model", HUB_ID, "--out", str(coll), "--no-progress"]) == 0
    assert _info(coll, capsys)["model_info"] == {
        "source": "hub",
        "id": HUB_ID,
        "revision": REVISION,
        "requested_revision": "main",
        "format": "transformers",
        "model": f"{HUB_ID}@{REVISION}",
    }
    assert main(["search", str(coll), "a blue dog", "--json"]) == 0  # recorded as HUB_ID@REVISION
    assert len(capsys.readouterr().out.splitlines()) == 10
    assert main(["search", str(coll), "a blue dog", "--model", f"{HUB_ID}@{OTHER_REVISION}"]) == 1
    err = capsys.readouterr().err
    assert "was made by the model with fingerprint" in err and f"({HUB_ID}@{REVISION})" in err
    assert len(_serve_search(coll, model=HUB_ID)) == 3
    assert len(_serve_search(coll)) == 3  # the recorded HUB_ID@REVISION, from the cache

    assert (
        main(["eval", str(manifest), "--model", HUB_ID, "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    )
    assert "t2i R@K" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["model_info"]["revision"] == REVISION

    run = tmp_path / "run"
    argv = ["train", str(manifest), "max_steps=1", "batch_size=6", "device=cpu", "model.lock_text=false",
            "--init", HUB_ID, "--out", str(run), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    tuned = run / "final"
    assert load_model(tuned, device="cpu").base_model["id"] == HUB_ID
    coll2 = tmp_path / "coll2"
    assert main(["embed", str(manifest), "--model", str(tuned), "--out", str(coll2), "--no-progress"]) == 0
    info = _info(coll2, capsys)["model_info"]
    assert info["format"] == "toolkit" and info["base_model"]["revision"] == REVISION

    assert main(["embed", str(manifest), "--model", "tiny-org/missing", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "'tiny-org/missing' is not in the Hugging Face cache" in err and str(hf_home / "hub") in err


def test_classify_takes_a_transformers_folder(checkpoints, manifest, tmp_path, capsys):
    folder, clf = checkpoints["clip"], tmp_path / "clf"
    argv = ["classify", "train", str(manifest), "--model", str(folder), "--out", str(clf),
            "--label-column", "label", "--epochs", "1"]  # fmt: skip
    assert main(argv) == 0
    assert main(["classify", "predict", "--model", str(folder), "--classifier", str(clf), "--text", "a red car"]) == 0
