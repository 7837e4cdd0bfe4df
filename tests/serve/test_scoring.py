"""One scoring story: a query gets the same order and the same scores from `retrieval search`, the
JSON API and clip-retrieval's ``/knn-service`` (the page: tests/serve/test_browser.py) for one served
configuration, hubness correction included; corrected scores come with their cosine."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from retrieval.cli import main
from retrieval.serve import create_app

QUERIES = ["a red dog", "a blue car", "green"]
K = 8


def cli_hits(capsys, model_dir, coll, query: str, *extra: str) -> list[dict]:
    capsys.readouterr()
    argv = ["search", str(coll), query, "-k", str(K), "--json", "--model", str(model_dir), *extra]
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def surfaces(client: TestClient, query: str) -> dict[str, list[tuple[int, float, float]]]:
    """(id, score, cosine) of each hit, best first, from the JSON API and /knn-service."""
    api = client.post("/collections/tiny/search/text", json={"text": query, "k": K, "modality": "image"})
    assert api.status_code == 200, api.text
    knn = client.post("/knn-service", json={"text": query, "num_images": K, "modality": "image"})
    assert knn.status_code == 200, knn.text
    assert api.json()["scoring"] == knn.headers["x-scoring"] == "isoftmax"
    return {
        "api": [(h["id"], h["score"], h["cosine"]) for h in api.json()["hits"]],
        "knn": [(h["id"], h["similarity"], h["cosine"]) for h in knn.json()],
    }


def test_cli_api_and_knn_service_agree(capsys, hubness_setup):
    model_dir, coll, config = hubness_setup
    with TestClient(create_app(config), base_url="http://localhost") as client:
        for query in QUERIES:
            cli = [
                (h["id"], h["score"], h["cosine"])
                for h in cli_hits(capsys, model_dir, coll, query, "--hubness", "isoftmax")
            ]
            served = surfaces(client, query)
            assert len(cli) == K
            for name, hits in served.items():
                assert [h[0] for h in hits] == [h[0] for h in cli], (query, name)
                for (_, score, cosine), (_, cli_score, cli_cosine) in zip(hits, cli):
                    assert score == pytest.approx(cli_score, abs=1e-5), (query, name)
                    assert cosine == pytest.approx(cli_cosine, abs=1e-5), (query, name)
            # corrected scores are not cosines, and every hit carries both
            assert any(abs(score - cosine) > 1e-3 for _, score, cosine in cli)
            plain = cli_hits(capsys, model_dir, coll, query)
            assert all(h["score"] == pytest.approx(h["cosine"]) for h in plain)
            by_id = {h["id"]: h["score"] for h in plain}
            for hit_id, _, cosine in cli:
                if hit_id in by_id:
                    assert cosine == pytest.approx(by_id[hit_id], abs=1e-5)  # the cosine is the plain score


def test_cli_table_shows_the_cosine_beside_a_corrected_score(capsys, hubness_setup):
    model_dir, coll, _ = hubness_setup
    capsys.readouterr()
    assert (
        main(
            ["search", str(coll), "a red dog", "-k", "3", "--model", str(model_dir), "--hubness", "isoftmax"]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["rank", "score", "cosine", "id"] and len(table) == 4


def test_info_says_how_queries_are_scored_and_counts_modalities(hubness_setup):
    _, _, config = hubness_setup
    with TestClient(create_app(config), base_url="http://localhost") as client:
        info = client.get("/collections/tiny").json()
    assert info["scoring"] == {"text": "isoftmax", "image": "isoftmax"}
    assert info["modalities"] == {"image": 32, "text": 32}


def test_item_and_embedding_searches_are_plain_cosine(hubness_setup):
    _, _, config = hubness_setup
    with TestClient(create_app(config), base_url="http://localhost") as client:
        r = client.post("/collections/tiny/search/item", json={"id": 0, "k": 3}).json()
        assert r["scoring"] == "cosine"
        assert all(h["score"] == h["cosine"] for h in r["hits"])


def test_expanded_queries_score_alike_on_the_cli_and_the_api(capsys, hubness_setup):
    """`serve --expand` and `search --expand` move a text query through the bank's pairs alike; the
    expanded scores are not the unexpanded ones."""
    import dataclasses

    model_dir, coll, config = hubness_setup
    changed = False
    with TestClient(create_app(dataclasses.replace(config, expand=True)), base_url="http://localhost") as client:
        for query in QUERIES:
            extra = ("--hubness", "isoftmax")
            cli = [(h["id"], h["score"], h["cosine"]) for h in cli_hits(capsys, model_dir, coll, query, *extra, "--expand")]
            api = surfaces(client, query)["api"]
            assert [h[0] for h in api] == [h[0] for h in cli], query
            for (_, score, cosine), (_, cli_score, cli_cosine) in zip(api, cli):
                assert score == pytest.approx(cli_score, abs=1e-5) and cosine == pytest.approx(cli_cosine, abs=1e-5)
            unexpanded = [(h["id"], h["score"]) for h in cli_hits(capsys, model_dir, coll, query, *extra)]
            changed |= unexpanded != [(i, s) for i, s, _ in cli]
    assert changed
