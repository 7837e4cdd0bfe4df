"""Hybrid search through the JSON API: the toggle of a text query, its settings, and what it may not reveal."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexes import Collection
from retrieval.config import ServeConfig

from support.corpora import square_collection
from support.keywords import KeywordEncoder


def _client(tmp_path: Path, text_fields: list[str] | None, hidden: tuple[str, ...] = ()):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    path = square_collection(tmp_path)
    if text_fields:
        with Collection.open(path) as coll:
            coll.set_text_fields(text_fields)
    config = ServeConfig(
        collections={"shapes": str(path)}, reload_interval=0.0, max_k=20, workers=1, hidden_fields=hidden
    )
    return TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost")


def _search(client, **body) -> dict:
    response = client.post("/collections/shapes/search/text", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_hybrid_text_search_through_the_api(tmp_path: Path) -> None:
    with _client(tmp_path, ["caption", "color"]) as client:
        info = client.get("/collections/shapes").json()
        assert info["text_fields"] == ["caption", "color"]
        dense = _search(client, text="red", k=4, modality="image")
        assert dense["scoring"] == "cosine" and all(h["lexical"] is None for h in dense["hits"])
        fused = _search(client, text="red", k=4, modality="image", hybrid=True)
        assert fused["scoring"] == "rrf"
        assert all(h["metadata"]["color"] == "red" and h["lexical"] > 0 for h in fused["hits"])
        assert all(isinstance(h["cosine"], float) for h in fused["hits"])
        words = _search(client, text="WORD", k=20, hybrid={"fusion": "lexical", "fields": ["caption"]})
        assert words["scoring"] == "bm25" and words["hits"]
        assert all(h["metadata"]["modality"] == "text" and h["cosine"] is None for h in words["hits"])
        weighted = _search(client, text="blue", k=3, hybrid={"fusion": "weighted", "alpha": 0.2})
        assert weighted["scoring"] == "weighted" and weighted["hits"][0]["metadata"]["color"] == "blue"
        filtered = _search(client, text="red", k=5, hybrid=True, where={"size": {"gte": 2}})
        assert filtered["hits"] and all(h["metadata"]["size"] >= 2 for h in filtered["hits"])


@pytest.mark.parametrize(
    ("text_fields", "hybrid", "code"),
    [
        (None, True, "no_text_index"),
        (["caption"], {"fields": ["color"]}, "unknown_text_field"),
        (["caption"], {"alpha": 2}, "bad_hybrid"),
        (["caption"], {"fusion": "max"}, None),  # refused by the schema (422)
        (["caption"], {"weight": 1}, None),
    ],
)
def test_bad_hybrid_requests(tmp_path: Path, text_fields, hybrid, code) -> None:
    with _client(tmp_path, text_fields) as client:
        response = client.post("/collections/shapes/search/text", json={"text": "red", "hybrid": hybrid})
        assert response.status_code in (400, 422), response.text
        if code:
            assert response.status_code == 400 and code in response.text


def test_hidden_fields_are_not_searched_for_words(tmp_path: Path) -> None:
    with _client(tmp_path, ["caption", "color"], hidden=("color",)) as client:
        assert client.get("/collections/shapes").json()["text_fields"] == ["caption"]
        response = client.post(
            "/collections/shapes/search/text", json={"text": "cat", "hybrid": {"fields": ["color"]}}
        )
        assert response.status_code == 400 and "unknown_text_field" in response.text
        # by default only the visible fields are searched: "cat" is a hidden colour value and a caption word
        hits = _search(client, text="cat", k=5, hybrid={"fusion": "lexical"})["hits"]
        assert [h["metadata"]["caption"] for h in hits] == ["the word cat"]
        assert all("color" not in h["metadata"] for h in hits)
