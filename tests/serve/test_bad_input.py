"""Bad input gets a JSON 4xx naming the problem, never a 500, and the server keeps serving."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from support.images import png_bytes
from support.keywords import DIM


def bomb_png(side: int = 2000) -> bytes:
    """A small file that decodes to side*side pixels (a tiny decompression bomb for a 1M-pixel limit)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


NAN_BODY = b'{"embedding": [NaN, 1, 1, 1, 1, 1, 1, 1]}'
JSON = {"content-type": "application/json"}


def text_search(client, **body):
    return client.post("/collections/shapes/search/text", json=body)


def upload(client, data: bytes, name="q.png", mime="image/png", **form):
    return client.post("/collections/shapes/search/image", files={"image": (name, data, mime)}, data=form)


BAD_REQUESTS = [
    ("empty text", lambda c: text_search(c, text="   "), 400, "empty_text"),
    ("text too long", lambda c: text_search(c, text="red " * 100), 400, "text_too_long"),
    ("k zero", lambda c: text_search(c, text="red", k=0), 400, "bad_k"),
    ("k too large", lambda c: text_search(c, text="red", k=21), 400, "bad_k"),
    ("k not an int", lambda c: text_search(c, text="red", k="many"), 422, "invalid_request"),
    (
        "unknown filter field",
        lambda c: text_search(c, text="red", where={"colour": "red"}),
        400,
        "unknown_field",
    ),
    (
        "bad filter operator",
        lambda c: text_search(c, text="red", where={"size": {"near": 2}}),
        400,
        "bad_filter",
    ),
    ("unknown body field", lambda c: text_search(c, text="red", limit=3), 422, "invalid_request"),
    ("bad modality", lambda c: text_search(c, text="red", modality="video"), 422, "invalid_request"),
    ("missing text", lambda c: text_search(c, k=3), 422, "invalid_request"),
    (
        "not json",
        lambda c: c.post("/collections/shapes/search/text", content=b"{oops"),
        422,
        "invalid_request",
    ),
    (
        "unknown collection",
        lambda c: c.post("/collections/nope/search/text", json={"text": "red"}),
        404,
        "unknown_collection",
    ),
    ("unknown item", lambda c: c.get("/collections/shapes/items/12345"), 404, "unknown_item"),
    ("item id not an int", lambda c: c.get("/collections/shapes/items/abc"), 422, "invalid_request"),
    (
        "unknown item vector",
        lambda c: c.post("/collections/shapes/search/item", json={"id": 999}),
        404,
        "unknown_item",
    ),
    ("unknown route", lambda c: c.get("/nothing/here"), 404, "not_found"),
    ("wrong method", lambda c: c.get("/collections/shapes/search/text"), 405, "method_not_allowed"),
    (
        "non-image upload",
        lambda c: upload(c, b"%PDF-1.4 not an image", "x.pdf", "application/pdf"),
        400,
        "bad_image",
    ),
    ("empty upload", lambda c: upload(c, b""), 400, "bad_image"),
    ("truncated png", lambda c: upload(c, png_bytes("red", 64)[:60]), 400, "bad_image"),
    ("decompression bomb", lambda c: upload(c, bomb_png()), 400, "bad_image"),
    ("oversized upload", lambda c: upload(c, b"\x89PNG" + b"0" * 300_000), 413, "too_large"),
    (
        "upload without file",
        lambda c: c.post("/collections/shapes/search/image", data={"k": "3"}),
        422,
        "invalid_request",
    ),
    ("upload bad filter json", lambda c: upload(c, png_bytes("red"), where="{bad"), 400, "bad_filter"),
    (
        "embedding wrong dim",
        lambda c: c.post("/collections/shapes/search/embedding", json={"embedding": [1.0, 0.0]}),
        400,
        "bad_embedding",
    ),
    (
        "embedding zeros",
        lambda c: c.post("/collections/shapes/search/embedding", json={"embedding": [0.0] * DIM}),
        400,
        "bad_embedding",
    ),
    ("filter value too big", lambda c: text_search(c, text="red", where={"size": 10**30}), 400, "bad_query"),
    ("item id too big", lambda c: c.get(f"/collections/shapes/items/{2**70}"), 404, "unknown_item"),
    (
        "item vector id too big",
        lambda c: c.post("/collections/shapes/search/item", json={"id": 2**70}),
        404,
        "unknown_item",
    ),
    ("image of id too big", lambda c: c.get(f"/collections/shapes/items/{2**70}/image"), 404, "unknown_item"),
    (
        "embedding NaN",
        lambda c: c.post("/collections/shapes/search/embedding", content=NAN_BODY, headers=JSON),
        400,
        "bad_embedding",
    ),
    (
        "embedding huge",
        lambda c: c.post("/collections/shapes/search/embedding", json={"embedding": [1e308] * DIM}),
        200,
        None,
    ),
    (
        "embedding not numbers",
        lambda c: c.post("/collections/shapes/search/embedding", json={"embedding": ["a"] * DIM}),
        422,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("what", "send", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_a_json_4xx(client, what, send, status, code):
    r = send(client)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
    if code is None:  # an edge case that must simply work
        return
    body = r.json()
    assert body["error"] == code, f"{what}: {body}"
    assert isinstance(body["detail"], str) and body["detail"]


def test_all_bad_inputs_then_a_good_query(client):
    for _, send, status, _code in BAD_REQUESTS:
        assert send(client).status_code == status
    r = client.post("/collections/shapes/search/text", json={"text": "red", "k": 2})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
    r = upload(client, png_bytes("green"), k="1")
    assert r.status_code == 200 and r.json()["hits"][0]["metadata"]["color"] == "green"


def test_body_limit_without_content_length(client):
    """A chunked body (no Content-Length) is cut off once it passes the limit."""

    def chunks():
        yield (
            b'--zzz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        for _ in range(100):
            yield b"x" * 10_000

    r = client.post(
        "/collections/shapes/search/image",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "too_large"
    r = client.post("/knn-service", content=chunks())
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert client.get("/healthz").status_code == 200


def test_content_length_over_limit_is_refused_up_front(client):
    r = client.post(
        "/collections/shapes/search/image",
        content=b"x" * 400_000,
        headers={"content-type": "multipart/form-data; boundary=q"},
    )
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_any_json_body_on_the_search_endpoints_gets_a_json_answer(client):
    """Arbitrary JSON for every field of the search endpoints: 200 or a JSON 4xx, never a 500."""
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    keys = st.sampled_from(["color", "size", "modality", "gte", "lt", "in"]) | st.text(max_size=6)
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=9) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=10,
    )
    fields = st.sampled_from(["text", "k", "where", "modality", "embedding", "id", "url"])

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.sampled_from(["text", "embedding", "item", "url"]), st.dictionaries(fields, values, max_size=5))
    def check(kind, body):
        r = client.post(f"/collections/shapes/search/{kind}", content=json.dumps(body).encode(), headers=JSON)
        assert r.status_code < 500, (kind, body, r.text)
        if r.status_code >= 400:
            assert "error" in r.json()

    check()
