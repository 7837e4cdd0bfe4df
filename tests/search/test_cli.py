"""`retrieval embed` and `retrieval search` end to end with a tiny real TwinEncoder, through main(argv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import Collection
from retrieval.cli import main
from retrieval.model import TwinEncoder
from retrieval.search import Searcher


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, corpus_rows) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, manifest, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "coll"
    argv = ["embed", str(manifest), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main([*argv, "--workers", "1", "--batch-size", "8", "--index", "Flat", "--no-progress"]) == 0
    return out


def test_embed_cli_builds_a_collection_of_the_model(embedded, tiny_model_dir, corpus_rows, capsys):
    model = TwinEncoder.load(tiny_model_dir, device="cpu")
    with Collection.open(embedded, read_only=True) as coll:
        assert len(coll) == 64 and coll.fingerprint == model.fingerprint()
        ids = coll.ids()
        metadata = coll.get(ids)
        vectors = coll.vectors(ids)
    images = [(m["path"], v) for m, v in zip(metadata, vectors) if m["modality"] == "image"]
    expected = model.encode_images([p for p, _ in images]).numpy()
    np.testing.assert_allclose(np.stack([v for _, v in images]), expected, atol=1e-5)


def test_search_cli_table_and_json(embedded, corpus_rows, capsys):
    capsys.readouterr()
    assert main(["search", str(embedded), "a red dog", "-k", "3"]) == 0  # model recorded by `embed`
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "id"] and len(table) == 4
    assert main(["search", str(embedded), "a red dog", "-k", "5", "--json", "--where", "split=test"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["metadata"]["split"] == "test" and h["metadata"]["modality"] == "image" for h in hits)
    image = corpus_rows[3]["image"]
    assert main(["search", str(embedded), "--image", image, "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["path"] == image
    assert main(["search", str(embedded), "--image", image, "--modality", "text", "--json", "-k", "2"]) == 0
    assert all(json.loads(x)["metadata"]["modality"] == "text" for x in capsys.readouterr().out.splitlines())
    assert main(["search", str(embedded), "in blue", "--image", image, "--json", "-k", "2"]) == 0  # composed
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_search_cli_errors_are_messages(embedded, tmp_path, capsys):
    assert main(["search", str(embedded)]) == 1
    assert "text query" in capsys.readouterr().err
    assert main(["search", str(embedded), "red", "--where", "novalue"]) == 1
    assert "field=value" in capsys.readouterr().err


def test_searcher_refuses_another_model(embedded, tiny_config):
    import torch

    from retrieval.model import build_model

    torch.manual_seed(1)
    other = build_model(tiny_config, device="cpu")
    with pytest.raises(ValueError, match="fingerprint") as info:
        Searcher(other, embedded)
    message = str(info.value)
    assert other.fingerprint() in message
    with Collection.open(embedded, read_only=True) as coll:
        assert coll.fingerprint in message


def test_real_model_searches_all_directions(embedded, tiny_model_dir, corpus_rows):
    model = TwinEncoder.load(tiny_model_dir, device="cpu")
    with Searcher(model, embedded) as searcher:
        assert len(searcher.text_to_image("a red dog", k=4)) == 4
        assert len(searcher.text_to_text("a red dog", k=4)) == 4
        own = searcher.image_to_image(corpus_rows[0]["image"], k=1)[0]
        assert own.metadata["path"] == corpus_rows[0]["image"]
        assert len(searcher.image_to_text_batch([corpus_rows[0]["image"], corpus_rows[1]["image"]], k=2)) == 2


def test_eval_mode_fast_path_matches_encode_texts(embedded, tiny_model_dir, corpus_rows):
    model = TwinEncoder.load(tiny_model_dir, device="cpu")
    queries = ["a red dog", "blue sky over a house", "cat"]
    expected = model.encode_texts(queries).numpy()
    images = [corpus_rows[0]["image"], corpus_rows[1]["image"]]
    expected_images = model.encode_images(images).numpy()
    with Searcher(model.eval(), embedded) as searcher:
        np.testing.assert_allclose(searcher.encode_texts(queries), expected, atol=1e-5)
        np.testing.assert_allclose(searcher.encode_images(images), expected_images, atol=1e-5)
    assert model.training is False
