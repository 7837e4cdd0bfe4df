"""`retrieval embed --text-fields`, `retrieval text-index` and `retrieval search --hybrid` through main(argv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexes import Collection
from retrieval.cli import main


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, corpus_rows) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, manifest, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "coll"
    argv = ["embed", str(manifest), "--model", str(tiny_model_dir), "--out", str(out), "--workers", "1"]
    assert (
        main(
            [
                *argv,
                "--batch-size",
                "16",
                "--index",
                "Flat",
                "--no-progress",
                "--text-fields",
                "image_id",
                "--id-column",
                "image_id",
            ]
        )
        == 0
    )
    return out


def _hits(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_embed_declares_the_text_index(embedded) -> None:
    with Collection.open(embedded, read_only=True) as coll:
        assert coll.text_fields == ["image_id"]


def test_search_hybrid_finds_an_identifier(embedded, capsys) -> None:
    capsys.readouterr()
    # "img" is in every identifier: all items are in the lexical list, ranked by it; "00013" in two only
    assert main(["search", str(embedded), "00013", "--hybrid", "image_id", "-k", "3", "--json"]) == 0
    hits = _hits(capsys)
    assert hits[0]["metadata"]["image_id"] == "img_00013" and hits[0]["metadata"]["modality"] == "image"
    assert hits[0]["lexical"] > 0 and hits[0]["cosine"] is not None
    assert main(["search", str(embedded), "00013", "--hybrid", "all", "--fusion", "lexical", "--json"]) == 0
    hits = _hits(capsys)
    assert [h["metadata"]["image_id"] for h in hits] == ["img_00013"]  # words alone: only what holds them
    assert (
        main(["search", str(embedded), "00013", "--hybrid", "image_id", "--modality", "text", "--json"]) == 0
    )
    hits = _hits(capsys)
    assert hits[0]["metadata"]["modality"] == "text" and hits[0]["metadata"]["image_id"] == "img_00013"
    assert main(["search", str(embedded), "img_00013", "--hybrid", "image_id", "-k", "2"]) == 0
    assert "cosine" in capsys.readouterr().out.splitlines()[0]
    assert (
        main(["search", str(embedded), "00013", "--hybrid", "image_id", "--where", "split=train", "--json"])
        == 0
    )
    assert all(h["metadata"]["split"] == "train" for h in _hits(capsys))  # img_00013 is train (13 % 4 != 0)


def test_search_hybrid_refuses_what_it_cannot_do(embedded, capsys) -> None:
    assert main(["search", str(embedded), "red", "--alpha", "0.2"]) == 2
    assert "--alpha only apply with --hybrid" in capsys.readouterr().err
    assert main(["search", str(embedded), "red", "--hybrid", "image_id", "--image", "x.png"]) == 2
    assert main(["search", str(embedded), "red", "--hybrid", "title"]) == 1
    assert "not ['title']" in capsys.readouterr().err


def test_text_index_command(embedded, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(embedded, copy)
    assert main(["text-index", str(copy), "--drop"]) == 0
    capsys.readouterr()
    assert main(["search", str(copy), "img_00013", "--hybrid", "image_id"]) == 1
    assert "no text index" in capsys.readouterr().err
    assert main(["text-index", str(copy), "image_id,caption", "--stemming", "porter"]) == 0
    assert json.loads(capsys.readouterr().out)["fields"] == ["image_id", "caption"]
    assert main(["text-index", str(copy)]) == 2
    assert main(["check", str(copy)]) == 0


def test_eval_reports_dense_lexical_and_hybrid(embedded, manifest, tiny_model_dir, tmp_path, capsys) -> None:
    argv = ["eval", str(manifest), "--model", str(tiny_model_dir), "--collection", str(embedded)]
    argv += ["--hybrid", "image_id", "--id-column", "image_id", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*argv, "--tune-hybrid", "-k", "1", "10"]) == 0
    printed = capsys.readouterr().out
    assert "dense" in printed and "lexical" in printed and "tuned on" in printed
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for key in ("t2i/R@10", "dense/t2i/R@10", "lexical/t2i/R@10", "hybrid/t2i/R@10"):
        assert key in saved["metrics"], key
    assert saved["hybrid"]["tuned"]["validation_queries"] > 0
    assert main(["eval", str(manifest), "--model", str(tiny_model_dir), "--hybrid", "image_id"]) == 2
