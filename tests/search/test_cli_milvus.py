"""`retrieval embed`, `search`, `eval --collection`, `info` and `copy` on a Milvus Lite location, through main(argv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import open_collection
from retrieval.cli import main

from support.milvus import unique_name


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, corpus_rows) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    return path


@pytest.fixture(scope="module")
def embedded(lite_db, manifest, tiny_model_dir) -> str:
    out = f"milvus-lite://{lite_db}/{unique_name('cli')}"
    argv = ["embed", str(manifest), "--model", str(tiny_model_dir), "--out", out]
    assert main([*argv, "--workers", "0", "--batch-size", "16", "--index", "Flat", "--no-progress"]) == 0
    return out


def _items(location: str | Path) -> dict[int, tuple[dict, tuple[float, ...]]]:
    with open_collection(location, read_only=True) as coll:
        ids = coll.ids()
        return {int(i): (m, tuple(np.round(v, 5))) for i, m, v in zip(ids, coll.get(ids), coll.vectors(ids))}


def test_embed_search_info_on_milvus_lite(embedded, corpus_rows, capsys):
    assert len(_items(embedded)) == 64
    capsys.readouterr()
    assert main(["search", embedded, "a red dog", "-k", "5", "--json", "--where", "split=test"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 5 and all(h["metadata"]["split"] == "test" for h in hits)
    image = corpus_rows[3]["image"]
    assert main(["search", embedded, "--image", image, "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["path"] == image
    assert main(["info", embedded]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "milvus-lite" and info["count"] == 64 and info["model_info"]["model_dir"]


def test_eval_compares_a_milvus_index_with_exact_search(embedded, manifest, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["eval", "--model", str(tiny_model_dir), str(manifest), "--collection", embedded,
            "--out", str(out), "-k", "1", "5", "--samples", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for k in (1, 5):  # a Flat index on Milvus is exact search
        assert metrics[f"index/t2i/R@{k}"] == pytest.approx(metrics[f"t2i/R@{k}"])


def test_copy_cli_to_a_folder_and_back_keeps_ids_and_metadata(embedded, tmp_path, lite_db, capsys):
    folder = tmp_path / "copy"
    assert main(["copy", embedded, str(folder)]) == 0
    assert "copied 64 of 64 items" in capsys.readouterr().out
    back = f"milvus-lite://{lite_db}/{unique_name('back')}"
    assert main(["copy", str(folder), back]) == 0
    assert _items(folder) == _items(embedded) == _items(back)
    with open_collection(embedded, read_only=True) as src, open_collection(back, read_only=True) as dst:
        assert dst.model_info == src.model_info and src.model_info["model_dir"]
    assert main(["copy", str(folder), back]) == 0  # a finished copy: nothing left to do
    assert "copied 0 of 64 items (64 already there)" in capsys.readouterr().out


def test_unreachable_server_is_an_error_naming_the_location(tiny_model_dir, capsys):
    pytest.importorskip("pymilvus")
    location = "milvus://127.0.0.1:1/photos?timeout=2"
    assert main(["search", location, "a red dog", "--model", str(tiny_model_dir)]) == 1
    assert "milvus://127.0.0.1:1/photos" in capsys.readouterr().err
    assert main(["copy", location, "milvus-lite://x.db/photos"]) == 1
    assert "milvus://127.0.0.1:1/photos" in capsys.readouterr().err
