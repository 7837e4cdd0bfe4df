"""Every endpoint of the service's own API, on a tiny collection with a keyword encoder."""

from __future__ import annotations

import json

from support.images import png_bytes
from support.keywords import DIM, KeywordEncoder, keyword_vector


def test_healthz_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "collections": ["shapes"]}
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/collections/{name}/search/text", "/knn-service", "/metadata", "/indices-list"} <= paths
    assert client.get("/docs").status_code == 200


def test_collection_info(client):
    info = client.get("/collections/shapes").json()
    assert info["count"] == 24
    assert info["dim"] == DIM
    assert info["metric"] == "ip"
    assert info["index_spec"] == "Flat"
    assert info["fingerprint"] == info["model_fingerprint"] == KeywordEncoder().fingerprint()
    assert {"modality", "path", "caption", "color", "size"} <= set(info["fields"])
    listed = client.get("/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["shapes"]


def test_search_text_finds_the_colour(client):
    r = client.post(
        "/collections/shapes/search/text", json={"text": "something red", "k": 5, "modality": "image"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] == "shapes" and body["k"] == 5
    hits = body["hits"]
    assert len(hits) == 5
    assert hits[4]["score"] < 1e-5 < hits[3]["score"]  # the four red squares, then unrelated items
    hits = hits[:4]
    assert all(h["metadata"]["color"] == "red" and h["metadata"]["modality"] == "image" for h in hits)
    assert all(abs(h["score"] - 1.0) < 1e-5 for h in hits)
    assert hits[0]["image_url"] == f"/collections/shapes/items/{hits[0]['id']}/image"


def test_search_text_with_filter_and_modality(client):
    r = client.post(
        "/collections/shapes/search/text",
        json={"text": "blue", "k": 3, "where": {"size": {"gte": 2}}, "modality": "image"},
    )
    hits = r.json()["hits"]
    assert [h["metadata"]["size"] >= 2 for h in hits] == [True] * len(hits)
    assert hits[0]["metadata"]["color"] == "blue"
    r = client.post("/collections/shapes/search/text", json={"text": "cat", "k": 1, "modality": "text"})
    top = r.json()["hits"][0]
    assert top["metadata"] == {"modality": "text", "caption": "the word cat", "color": "cat", "size": -1}
    assert top["image_url"] is None


def test_search_uploaded_image(client):
    r = client.post(
        "/collections/shapes/search/image",
        files={"image": ("q.png", png_bytes("green"), "image/png")},
        data={"k": "4", "modality": "image", "where": json.dumps({"size": [0, 1, 2, 3]})},
    )
    assert r.status_code == 200, r.text
    assert {h["metadata"]["color"] for h in r.json()["hits"]} == {"green"}


def test_search_embedding_and_item(client):
    vec = (keyword_vector("yellow") * 3).tolist()  # not unit: the server normalises it
    r = client.post(
        "/collections/shapes/search/embedding", json={"embedding": vec, "k": 2, "modality": "image"}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["metadata"]["color"] for h in hits] == ["yellow", "yellow"]
    r = client.post("/collections/shapes/search/item", json={"id": hits[0]["id"], "k": 3})
    assert r.status_code == 200, r.text
    assert {h["metadata"]["color"] for h in r.json()["hits"]} == {"yellow"}


def test_item_metadata_and_image(client):
    r = client.post("/collections/shapes/search/text", json={"text": "red", "k": 1, "modality": "image"})
    hit = r.json()["hits"][0]
    item = client.get(f"/collections/shapes/items/{hit['id']}").json()
    assert item["id"] == hit["id"] and item["metadata"]["color"] == "red"
    img = client.get(item["image_url"])
    assert img.status_code == 200
    assert img.headers["content-type"] == "image/png"
    assert img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sandbox" in img.headers["content-security-policy"]
    # a thumbnail is only made when the image is larger than asked (these squares are tiny)
    assert client.get(item["image_url"] + "?max_side=16").headers["content-type"] == "image/png"
    assert client.get(item["image_url"] + "?max_side=5").status_code == 422


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "<title>" in r.text and "search/text" in r.text


def test_url_search_is_off_by_default(client):
    r = client.post("/collections/shapes/search/url", json={"url": "http://example.com/a.png"})
    assert r.status_code == 400
    assert r.json()["error"] == "urls_disabled"


def test_hidden_fields_are_not_returned_but_images_still_served(config, encoder):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    app = create_app(config.replace(hidden_fields=["path"]), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        hit = c.post(
            "/collections/shapes/search/text", json={"text": "red", "k": 1, "modality": "image"}
        ).json()["hits"][0]
        assert "path" not in hit["metadata"]
        assert c.get(hit["image_url"]).status_code == 200


def test_several_collections_and_no_model(tmp_path, config, encoder):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    from support.corpora import square_collection

    other = square_collection(tmp_path / "two", name="other", fingerprint=None)
    cfg = config.replace(collections={**config.collections, "other": str(other)})
    app = create_app(cfg, models={"shapes": encoder})
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/healthz").json()["collections"] == ["other", "shapes"]
        info = c.get("/collections/other").json()
        assert info["text_search"] is False and info["model_fingerprint"] is None
        r = c.post("/collections/other/search/text", json={"text": "red"})
        assert r.status_code == 400 and r.json()["error"] == "no_model"
        vec = keyword_vector("red").tolist()
        r = c.post("/collections/other/search/embedding", json={"embedding": vec, "k": 1})
        assert r.status_code == 200 and r.json()["hits"][0]["metadata"]["color"] == "red"
        # no media root declared for "other": its images are not served
        hit = r.json()["hits"][0]
        assert hit["image_url"] is None
        r = c.get(f"/collections/other/items/{hit['id']}/image")
        assert r.status_code == 404 and r.json()["error"] == "no_media_root"


def test_model_mismatch_is_refused_at_startup(tmp_path, config):
    import pytest

    from retrieval.serve import create_app

    class Other:
        def encode_texts(self, texts):  # pragma: no cover - never called
            raise AssertionError

        def encode_images(self, images):  # pragma: no cover - never called
            raise AssertionError

        def fingerprint(self):
            return "another-model"

    with pytest.raises(ValueError, match="another-model"):
        create_app(config, model=Other())


def test_reload_picks_up_items_added_by_another_writer(client, collection_dir):
    from indexes import Collection

    with Collection.open(collection_dir) as coll:
        coll.add(
            keyword_vector("dog")[None, :],
            [{"modality": "image", "caption": "a dog", "color": "dog", "size": 9}],
        )
    r = client.post("/collections/shapes/reload")
    assert r.status_code == 200 and r.json()["reloaded"] is True
    assert r.json()["info"]["count"] == 25
    hits = client.post(
        "/collections/shapes/search/text", json={"text": "dog", "k": 1, "modality": "image"}
    ).json()
    assert hits["hits"][0]["metadata"]["caption"] == "a dog"


def test_automatic_reload_when_the_collection_changes_on_disk(config, encoder, collection_dir):
    import time

    from fastapi.testclient import TestClient

    from indexes import Collection
    from retrieval.serve import create_app

    with TestClient(
        create_app(config.replace(reload_interval=0.05), model=encoder), base_url="http://localhost"
    ) as c:
        assert c.get("/collections/shapes").json()["count"] == 24
        with Collection.open(collection_dir) as coll:
            coll.add(
                keyword_vector("cat")[None, :], [{"modality": "image", "caption": "a cat", "color": "cat"}]
            )
        deadline = time.monotonic() + 20
        while c.get("/collections/shapes").json()["count"] != 25:
            assert time.monotonic() < deadline, "the change on disk was never picked up"
            time.sleep(0.05)
        assert c.get("/collections/shapes").json()["reloads"] == 1


def test_no_pickle_in_the_service():
    from pathlib import Path

    import retrieval.serve

    for source in Path(retrieval.serve.__file__).parent.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        for banned in ("import pickle", "torch.load(", "allow_pickle=True", "joblib"):
            assert banned not in text, f"{source.name} uses {banned}"


def test_collection_names_must_fit_in_urls(config, encoder):
    import pytest

    from retrieval.serve import create_app

    with pytest.raises(ValueError, match="URLs"):
        create_app(
            config.replace(collections={"a/b": config.collections["shapes"]}, media_roots={}), model=encoder
        )


def test_thumbnails(tmp_path, encoder):
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from indexes import Collection
    from retrieval.config import ServeConfig
    from retrieval.serve import create_app

    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (640, 320), (200, 10, 10)).save(media / "big.png")
    (media / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    with Collection.create(tmp_path / "c", dim=DIM, index="Flat") as coll:
        coll.add(np.eye(DIM, dtype=np.float32)[:2], [{"path": "big.png"}, {"path": "logo.svg"}])
    cfg = ServeConfig(
        collections={"c": str(tmp_path / "c")}, media_roots={"c": str(media)}, reload_interval=0
    )
    with TestClient(create_app(cfg, model=encoder), base_url="http://localhost") as client:
        r = client.get("/collections/c/items/0/image?max_side=64")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (64, 32)
        r = client.get("/collections/c/items/1/image?max_side=64")  # not decodable: the file itself
        assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
        assert "sandbox" in r.headers["content-security-policy"]


def test_an_empty_collection_answers_with_no_hits(tmp_path, encoder):
    from fastapi.testclient import TestClient

    from indexes import Collection
    from retrieval.config import ServeConfig
    from retrieval.serve import create_app

    Collection.create(tmp_path / "empty", dim=DIM, index="Flat").close()
    cfg = ServeConfig(collections={"empty": str(tmp_path / "empty")}, reload_interval=0)
    with TestClient(create_app(cfg, model=encoder), base_url="http://localhost") as c:
        assert c.get("/collections/empty").json()["count"] == 0
        r = c.post("/collections/empty/search/text", json={"text": "red", "k": 5, "modality": "image"})
        assert r.status_code == 200 and r.json()["hits"] == []
        r = c.post("/knn-service", json={"text": "red", "num_images": 3, "deduplicate": True})
        assert r.status_code == 200 and r.json() == []
