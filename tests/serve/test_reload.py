"""Reloading through the API: its own permission (the reload key), and a rate limit per collection."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from retrieval.serve import create_app

from support.keywords import KeywordEncoder

RELOAD = "/collections/shapes/reload"


def _client(config):
    return TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost")


def test_a_keyed_server_without_a_reload_key_does_not_reload_on_request(config):
    with _client(config.replace(api_key="query-key")) as c:
        r = c.post(RELOAD, headers={"X-API-Key": "query-key"})
        assert r.status_code == 403 and r.json()["error"] == "reload_disabled", r.text
        assert "--reload-key" in r.json()["detail"]
        # queries are unaffected
        r = c.post(
            "/collections/shapes/search/text", json={"text": "red"}, headers={"X-API-Key": "query-key"}
        )
        assert r.status_code == 200


def test_the_reload_key_is_its_own_permission(config):
    with _client(config.replace(api_key="query-key", reload_key="admin-key")) as c:
        query_only = {"X-API-Key": "query-key"}
        r = c.post(RELOAD, headers=query_only)
        assert r.status_code == 401 and "X-Reload-Key" in r.json()["detail"]
        r = c.post(RELOAD, headers={**query_only, "X-Reload-Key": "query-key"})
        assert r.status_code == 401
        r = c.post(RELOAD, headers={**query_only, "X-Reload-Key": "admin-key"})
        assert r.status_code == 200 and r.json()["reloaded"] is True
        r = c.post(RELOAD, headers={"X-Reload-Key": "admin-key"})  # the API key is still needed
        assert r.status_code == 401
    # a keyless (local) server with a reload key: the key is needed too
    with _client(config.replace(reload_key="admin-key")) as c:
        assert c.post(RELOAD).status_code == 401
        assert c.post(RELOAD, headers={"X-Reload-Key": "admin-key"}).status_code == 200


def test_reloads_are_rate_limited_per_collection(config):
    with _client(config.replace(reload_min_interval=0.5)) as c:  # keyless local server: reload is open
        assert c.post(RELOAD).status_code == 200
        r = c.post(RELOAD)
        assert r.status_code == 429 and r.json()["error"] == "too_many_reloads"
        assert int(r.headers["retry-after"]) >= 1
        answered = sum(c.post(RELOAD).status_code == 200 for _ in range(20))
        assert answered == 0
        time.sleep(0.6)
        assert c.post(RELOAD).status_code == 200
        assert c.get("/collections/shapes").json()["reloads"] == 2
