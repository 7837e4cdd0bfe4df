"""No server file path in any answer unless the operator asks for them (``show_paths``); media and
every other answer say ``Cross-Origin-Resource-Policy``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.config import ServeConfig
from retrieval.serve import create_app
from retrieval.serve.privacy import PathScrubber

from support.images import color_png
from support.keywords import DIM, KeywordEncoder, keyword_vector


@pytest.fixture
def demo_like(tmp_path: Path) -> tuple[ServeConfig, Path]:
    """Items as `retrieval embed` records them: absolute paths in `path` and `image_id`, a tar member,
    a file outside the media root, and a caption that starts with a slash."""
    from indexes import Collection

    root = tmp_path / "data" / "media"
    inside = color_png(root / "emoji" / "red.png", "red", 40)
    outside = color_png(tmp_path / "private" / "blue.png", "blue", 40)
    with tarfile.open(root / "shard.tar", "w") as tar:
        tar.add(inside, arcname="member.png")
    items = [
        {"modality": "image", "path": str(inside), "image_id": str(inside), "caption": "a red square"},
        {"modality": "image", "path": f"tar://{root / 'shard.tar'}#member.png", "caption": "red in a shard"},
        {"modality": "image", "path": str(outside), "image_id": str(outside), "caption": "red elsewhere"},
        {"modality": "text", "caption": "/r/aww red things", "source": f"file://{inside}"},
    ]
    with Collection.create(tmp_path / "coll", dim=DIM, index="Flat") as coll:
        coll.add(np.stack([keyword_vector("red")] * len(items)), items)
    config = ServeConfig(
        collections={"demo": str(tmp_path / "coll")}, media_roots={"demo": str(root)}, reload_interval=0
    )
    return config, tmp_path


def _answers(c: TestClient) -> list[str]:
    out = []
    r = c.post("/collections/demo/search/text", json={"text": "red", "k": 10})
    assert r.status_code == 200
    out.append(r.text)
    ids = [h["id"] for h in r.json()["hits"]]
    out += [c.get(f"/collections/demo/items/{i}").text for i in ids]
    out.append(c.post("/knn-service", json={"text": "red", "modality": "image", "num_images": 10}).text)
    out.append(c.post("/knn-service", json={"text": "red", "modality": "text", "num_images": 10}).text)
    out.append(c.post("/metadata", json={"ids": ids}).text)
    out.append(c.get("/collections").text)
    out.append(c.get("/collections/demo").text)
    return out


def test_answers_show_no_server_paths(demo_like):
    config, tmp_path = demo_like
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        answers = _answers(c)
        for text in answers:
            assert str(tmp_path) not in text, text
            assert "/private/" not in text and "tar:///" not in text
        hits = {
            h["metadata"]["caption"]: h["metadata"]
            for h in c.post("/collections/demo/search/text", json={"text": "red", "k": 10}).json()["hits"]
        }
    # inside the media root: relative to it (what the page needs to name the file); elsewhere: the name
    assert hits["a red square"]["path"] == "emoji/red.png" == hits["a red square"]["image_id"]
    assert hits["red in a shard"]["path"] == "shard.tar#member.png"
    assert hits["red elsewhere"]["path"] == "blue.png"
    assert hits["/r/aww red things"]["source"] == "emoji/red.png"
    assert "/r/aww red things" in hits  # a caption that starts with a slash is left alone


def test_the_operator_may_show_paths(demo_like):
    config, tmp_path = demo_like
    with TestClient(
        create_app(config.replace(show_paths=True), model=KeywordEncoder()), base_url="http://localhost"
    ) as c:
        r = c.post("/collections/demo/search/text", json={"text": "red", "k": 10})
        assert str(tmp_path) in r.text


def test_media_is_still_served_from_the_scrubbed_items(demo_like):
    config, _ = demo_like
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        hits = c.post("/collections/demo/search/text", json={"text": "red", "k": 10}).json()["hits"]
        served = [c.get(h["image_url"]) for h in hits if h["image_url"]]
        assert [r.status_code for r in served].count(200) == 2  # the file and the tar member
        assert [r.status_code for r in served].count(403) == 1  # outside the media root


def test_a_failed_reload_does_not_tell_where_the_collection_is(demo_like):
    config, tmp_path = demo_like
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        manifest = tmp_path / "coll" / "manifest.json"
        manifest.write_text("{broken")
        r = c.post("/collections/demo/reload")
        assert r.status_code == 400 and r.json()["error"] == "reload_failed"
        assert str(tmp_path) not in r.text and "coll" not in r.json()["detail"].replace("collection", "")


def test_messages_lose_server_paths():
    scrub = PathScrubber(extra_roots=["/srv/models"])
    message = "cannot read image /home/alice/photos/cat.png: no such file; tar:///data/s.tar#x.png too"
    shown = scrub.message(message)
    assert "alice" not in shown and "/data/" not in shown
    assert "cat.png" in shown and "s.tar#x.png" in shown
    assert (
        scrub.message("see http://example.com/home/x and /r/aww")
        == "see http://example.com/home/x and /r/aww"
    )
    assert scrub.message("model /srv/models/best failed") == "model best failed"
    assert PathScrubber(show=True).message(message) == message


def test_cross_origin_resource_policy(demo_like):
    config, _ = demo_like
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        hits = c.post("/collections/demo/search/text", json={"text": "red", "k": 1}).json()["hits"]
        for r in (
            c.get(hits[0]["image_url"]),
            c.get(hits[0]["image_url"] + "?max_side=16"),
            c.get("/healthz"),
        ):
            assert r.headers["cross-origin-resource-policy"] == "same-origin"
            assert r.headers["x-content-type-options"] == "nosniff"
        assert (
            c.get("/collections/demo/items/999/image").headers["cross-origin-resource-policy"]
            == "same-origin"
        )
    front = config.replace(cors_origins=["http://front.example"])
    with TestClient(create_app(front, model=KeywordEncoder()), base_url="http://localhost") as c:
        hits = c.post("/collections/demo/search/text", json={"text": "red", "k": 1}).json()["hits"]
        # the operator let another site use the service: its pages may show the images
        assert c.get(hits[0]["image_url"]).headers["cross-origin-resource-policy"] == "cross-origin"


def test_openapi_declares_the_keys(config):
    app = create_app(config.replace(api_key="k", reload_key="r"), model=KeywordEncoder())
    with TestClient(app, base_url="http://localhost") as c:
        schema = c.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["ReloadKey"]["name"] == "X-Reload-Key"
    paths = schema["paths"]
    assert paths["/collections/{name}/search/text"]["post"]["security"] == [{"ApiKey": []}]
    assert paths["/knn-service"]["post"]["security"] == [{"ApiKey": []}]
    assert paths["/collections/{name}/reload"]["post"]["security"] == [{"ApiKey": [], "ReloadKey": []}]
    assert paths["/healthz"]["get"]["security"] == []
    assert json.dumps(schema)  # serialisable as it is
    keyless = create_app(config, model=KeywordEncoder())
    with TestClient(keyless, base_url="http://localhost") as c:
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})
