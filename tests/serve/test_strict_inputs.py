"""Inputs that used to reach the client as 500s or be read loosely: a NUL byte in a stored media
path, integers past Python's digit limit, ``k`` given as a string or a boolean, and base64 that
is not base64."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.config import ServeConfig
from retrieval.serve import create_app

from support.images import color_png, png_bytes
from support.keywords import DIM, KeywordEncoder, keyword_vector

JSON = {"content-type": "application/json"}
HUGE = "9" * 5000  # past Python's 4,300-digit limit for int <-> str


def test_a_nul_byte_in_a_stored_media_path_is_a_404(tmp_path: Path):
    from indexes import Collection

    root = tmp_path / "media"
    color_png(root / "ok.png", "red")
    with Collection.create(tmp_path / "coll", dim=DIM, index="Flat") as coll:
        ids = coll.add(
            np.stack([keyword_vector("red")] * 3),
            [
                {"modality": "image", "path": "ok\x00.png"},
                {"modality": "image", "path": f"tar://{root}/a.tar\x00#x.png"},
                {"modality": "image", "path": "ok.png"},
            ],
        ).tolist()
    cfg = ServeConfig(
        collections={"c": str(tmp_path / "coll")}, media_roots={"c": str(root)}, reload_interval=0
    )
    with TestClient(create_app(cfg, model=KeywordEncoder()), base_url="http://localhost") as c:
        for item in ids[:2]:
            for query in ("", "?max_side=32"):
                r = c.get(f"/collections/c/items/{item}/image{query}")
                assert r.status_code == 404, r.text
                assert r.json()["error"] == "missing_image"
        assert c.get(f"/collections/c/items/{ids[2]}/image").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/knn-service", '{"text": "red", "num_images": ' + HUGE + "}"),
        ("/knn-service", '{"embedding_input": [' + HUGE + "]}"),
        ("/metadata", '{"ids": [' + HUGE + "]}"),
        ("/collections/shapes/search/text", '{"text": "red", "k": ' + HUGE + "}"),
        ("/collections/shapes/search/text", '{"text": "red", "where": {"size": ' + HUGE + "}}"),
        ("/collections/shapes/search/item", '{"id": ' + HUGE + "}"),
    ],
)
def test_integers_past_the_digit_limit_are_a_4xx(client, path, body):
    r = client.post(path, content=body, headers=JSON)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) >= {"error", "detail"}


def test_a_huge_integer_in_a_form_filter_is_a_4xx(client):
    r = client.post(
        "/collections/shapes/search/image",
        files={"image": ("q.png", png_bytes("red"), "image/png")},
        data={"where": '{"size": ' + HUGE + "}"},
    )
    assert r.status_code == 400 and r.json()["error"] == "bad_filter", r.text


@pytest.mark.parametrize("k", ["5", True, 5.0, "five", None, [5]])
def test_k_must_be_an_integer(client, k):
    for path, body in [
        ("/collections/shapes/search/text", {"text": "red", "k": k}),
        ("/collections/shapes/search/item", {"id": 0, "k": k}),
        ("/collections/shapes/search/embedding", {"embedding": keyword_vector("red").tolist(), "k": k}),
        ("/knn-service", {"text": "red", "num_images": k}),
    ]:
        r = client.post(path, json=body)
        if k is None and path == "/knn-service":
            continue  # clip-retrieval's clients send null for "the default"
        assert 400 <= r.status_code < 500, (path, k, r.text)


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_embedding_values_must_be_numbers(client, value):
    vector = keyword_vector("red").tolist()
    vector[0] = value
    r = client.post("/collections/shapes/search/embedding", json={"embedding": vector})
    assert r.status_code in (400, 422), r.text


def test_id_must_be_an_integer(client):
    for value in ("0", True, 0.0):
        r = client.post("/collections/shapes/search/item", json={"id": value})
        assert r.status_code in (400, 422), (value, r.text)
    assert client.post("/collections/shapes/search/item", json={"id": 0}).status_code == 200


@pytest.mark.parametrize("text", ["!!!!", "a!b=", "@@@", "====", "abcde"])
def test_invalid_base64_is_reported_as_invalid(client, text):
    r = client.post("/knn-service", json={"image": text})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_image"
    assert "not valid base64" in r.json()["detail"], r.text


def test_base64_variants_clients_send_are_accepted(client):
    data = png_bytes("green")
    plain = base64.b64encode(data).decode()
    variants = [
        plain,
        plain.rstrip("="),  # padding dropped
        base64.urlsafe_b64encode(data).decode(),  # URL-safe alphabet
        "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)),  # MIME line breaks
        "data:image/png;base64," + plain,
    ]
    for text in variants:
        r = client.post("/knn-service", content=json.dumps({"image": text, "num_images": 1}), headers=JSON)
        assert r.status_code == 200, r.text
        assert r.json()[0]["color"] == "green"
