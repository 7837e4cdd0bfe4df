"""clip-retrieval's back-end API: the bodies its ClipClient and front end send, the shapes they read."""

from __future__ import annotations

import base64
import json

from support.images import png_bytes
from support.keywords import keyword_vector


def clip_body(**fields):
    """What clip-retrieval's ClipClient posts (every key present, unused ones null)."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "shapes",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 5,
        "num_result_ids": 5,
        "verbose": False,
    }
    body.update(fields)
    return body


def post_raw(client, path, body, content_type=None):
    """Post JSON text the way `requests.post(data=json.dumps(...))` does: no JSON content type."""
    headers = {"content-type": content_type} if content_type else {}
    return client.post(path, content=json.dumps(body).encode(), headers=headers)


def test_indices_list_get_and_post(client):
    assert client.get("/indices-list").json() == ["shapes"]
    assert client.post("/indices-list").json() == ["shapes"]


def test_knn_text_query_like_clip_client(client):
    r = post_raw(client, "/knn-service", clip_body(text="a red thing", deduplicate=False))
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list) and len(items) == 5
    first = items[0]
    assert {"id", "similarity", "caption", "url"} <= set(first)
    assert first["caption"] == "a red square"
    assert first["url"].startswith("http://localhost/collections/shapes/items/")
    assert abs(first["similarity"] - 1.0) < 1e-5
    assert (
        r.headers["x-ignored-options"]
        == "use_safety_model,use_violence_detector,aesthetic_score,aesthetic_weight"
    )
    # the image the url points at is really served
    assert client.get(first["url"].replace("http://localhost", "")).status_code == 200


def test_knn_deduplicate_drops_identical_vectors(client):
    plain = post_raw(client, "/knn-service", clip_body(text="red", deduplicate=False)).json()
    dedup = post_raw(client, "/knn-service", clip_body(text="red", deduplicate=True)).json()
    assert [i["caption"] for i in plain[:4]] == ["a red square"] * 4
    # the four red squares share one vector: one survives, then the next distinct items
    assert sum(i.get("caption") == "a red square" for i in dedup) == 1


def test_knn_base64_image_like_clip_front(client):
    image = base64.b64encode(png_bytes("blue")).decode()
    body = {
        "text": None,
        "image": image,
        "image_url": None,
        "modality": "image",
        "num_images": 3,
        "indice_name": "shapes",
        "num_result_ids": 10,
        "use_mclip": False,
        "deduplicate": False,
        "use_safety_model": False,
    }
    r = post_raw(client, "/knn-service", body, content_type="text/plain;charset=UTF-8")
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == 10
    assert [i["color"] for i in items[:3]] == ["blue"] * 3
    # past num_images only ids and scores come back (the front end asks /metadata for the rest)
    assert set(items[5]) == {"id", "similarity", "cosine"}
    meta = post_raw(client, "/metadata", {"ids": [items[5]["id"]], "indice_name": "shapes"}).json()
    assert meta[0]["id"] == items[5]["id"] and "caption" in meta[0]["metadata"]


def test_knn_embedding_and_text_modality(client):
    r = post_raw(
        client,
        "/knn-service",
        clip_body(
            embedding_input=keyword_vector("dog").tolist(), modality="text", num_images=1, deduplicate=False
        ),
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["caption"] == "the word dog"


def test_knn_defaults_to_first_collection_and_caps_result_ids(client):
    r = post_raw(
        client,
        "/knn-service",
        {"text": "green", "num_images": 2, "num_result_ids": 10**6, "modality": "image"},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()) == 16  # every image item: num_result_ids is capped, then limited by what matches


def test_metadata_endpoint(client):
    r = post_raw(client, "/metadata", {"ids": [0, 1, 999], "indice_name": "shapes"})
    assert r.status_code == 200
    body = r.json()
    assert [m["id"] for m in body] == [0, 1]  # unknown ids are left out
    assert body[0]["metadata"]["caption"] == "a red square"
    assert post_raw(client, "/metadata", {"ids": [], "indice_name": "shapes"}).json() == []


def test_clip_errors_are_json_4xx(client):
    cases = [
        (clip_body(), "no_query"),
        (clip_body(text="red", indice_name="nope"), "unknown_collection"),
        (clip_body(text="red", num_images=0), "bad_k"),
        (clip_body(text="red", modality="video"), "bad_modality"),
        (clip_body(image="!!!not base64!!!"), "bad_image"),
        (clip_body(image=base64.b64encode(b"not an image").decode()), "bad_image"),
        (clip_body(image_url="http://example.com/x.png"), "urls_disabled"),
        (clip_body(embedding_input=[1.0, 2.0]), "bad_embedding"),
    ]
    for body, code in cases:
        r = post_raw(client, "/knn-service", body)
        assert 400 <= r.status_code < 500, (body, r.text)
        assert r.json()["error"] == code, (body, r.text)
    r = client.post("/knn-service", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "bad_json"
    r = post_raw(client, "/metadata", {"ids": "0"})
    assert r.status_code == 400 and r.json()["error"] == "bad_ids"


def test_any_json_body_gets_an_answer_never_a_500(client):
    """Arbitrary JSON in every field clip-retrieval clients send: 200 or a JSON 4xx, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["color", "size", "gte", "lt"]) | st.text(max_size=5), inner, max_size=3
            )
        ),
        max_leaves=8,
    )
    fields = ["text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids",
              "indice_name", "deduplicate", "where", "ids"]  # fmt: skip

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.dictionaries(st.sampled_from(fields), values, max_size=6) | values)
    def check(body):
        for path in ("/knn-service", "/metadata"):
            r = client.post(path, content=json.dumps(body, allow_nan=True).encode())
            assert r.status_code < 500, (path, body, r.text)
            if r.status_code >= 400:
                assert "error" in r.json()

    check()
