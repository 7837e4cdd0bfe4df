"""Browser-borne requests on the default loopback set-up: DNS rebinding (the Host header),
cross-site form posts (content type and Origin) and reload from another origin."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from retrieval.serve import create_app


def test_host_header_allow_list_on_loopback(config, encoder):
    with TestClient(create_app(config, model=encoder), base_url="http://localhost:8000") as c:
        assert c.get("/healthz").status_code == 200
        for host in ("127.0.0.1:8000", "[::1]:8000", "localhost"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            r = c.get("/collections/shapes", headers={"host": host})
            assert r.status_code == 400 and r.json()["error"] == "bad_host", host
            assert (
                c.post(
                    "/collections/shapes/search/text", json={"text": "red"}, headers={"host": host}
                ).status_code
                == 400
            )
    # named hosts can be allowed explicitly
    app = create_app(config.replace(allowed_hosts=("search.lan",)), model=encoder)
    with TestClient(app, base_url="http://search.lan") as c:
        assert c.get("/healthz").status_code == 200


def test_cross_site_posts_are_refused(client):
    evil = {"origin": "http://evil.example"}
    r = client.post("/collections/shapes/reload", headers=evil)
    assert r.status_code == 403 and r.json()["error"] == "cross_origin"
    r = client.post(
        "/knn-service", content=json.dumps({"text": "red"}), headers={**evil, "content-type": "text/plain"}
    )
    assert r.status_code == 403
    r = client.post("/collections/shapes/search/text", json={"text": "red"}, headers=evil)
    assert r.status_code == 403
    r = client.post(
        "/collections/shapes/search/text", json={"text": "red"}, headers={"sec-fetch-site": "cross-site"}
    )
    assert r.status_code == 403
    # form content types are refused on JSON endpoints, even without an Origin
    r = client.post("/collections/shapes/reload", data={"a": "b"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = client.post(
        "/knn-service",
        content=b'{"text": "red"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    r = client.post(
        "/collections/shapes/search/text", content=b'{"text": "red"}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    # the page's own requests (same origin) pass
    same = {"origin": "http://localhost"}
    assert client.post("/collections/shapes/reload", headers=same).status_code == 200
    assert (
        client.post("/collections/shapes/search/text", json={"text": "red"}, headers=same).status_code == 200
    )


def test_reload_is_not_callable_from_an_allowed_cors_origin(config, encoder):
    app = create_app(config.replace(cors_origins=("http://front.example",)), model=encoder)
    front = {"origin": "http://front.example"}
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post(
            "/knn-service",
            content=json.dumps({"text": "red"}),
            headers={**front, "content-type": "text/plain"},
        )
        assert r.status_code == 200, r.text  # clip-retrieval's front end, allowed by CORS
        r = c.post("/collections/shapes/reload", headers=front)
        assert r.status_code == 403 and r.json()["error"] == "cross_origin"
