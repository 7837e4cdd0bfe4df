"""The service with hubness correction and match-head re-ranking switched on (additive options)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from retrieval.match import MatchHead
from retrieval.search import QueryBank, query_bank_path


def _client(config, model):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    return TestClient(create_app(config, model=model), base_url="http://localhost")


def _hits(client, text: str, k: int = 6) -> list[dict]:
    response = client.post(
        "/collections/shapes/search/text", json={"text": text, "k": k, "modality": "image"}
    )
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def test_hubness_and_reranking_reorder_text_queries(config, encoder, collection_dir):
    with _client(config, encoder) as plain:
        dense = _hits(plain, "something red")
    bank = encoder.encode_texts(["red", "blue", "green square", "a circle"])
    QueryBank({"text": np.asarray(bank)}).save(query_bank_path(collection_dir))
    model = copy.copy(encoder)
    torch.manual_seed(0)
    head = MatchHead(int(encoder.embed_dim), hidden=8)
    torch.nn.init.normal_(head.mlp[2].weight, std=3.0)
    head.scale.data.fill_(0.0)
    model.match_head = head
    with _client(config.replace(rerank=6), model) as reranking:
        reranked = _hits(reranking, "something red")
    assert sorted(h["id"] for h in reranked) == sorted(h["id"] for h in dense)  # only the order changes
    scores = [h["score"] for h in reranked]  # match probabilities, best first
    assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)
    with _client(config.replace(hubness="csls", rerank=6), model) as both:
        assert len(_hits(both, "something red")) == 6


def test_hubness_without_a_bank_fails_at_start(config, encoder):
    with (
        pytest.raises(FileNotFoundError, match="no query bank"),
        _client(config.replace(hubness="isoftmax"), encoder),
    ):
        pass
