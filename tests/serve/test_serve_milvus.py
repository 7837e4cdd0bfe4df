"""The service on a Milvus Lite collection beside a local one: searches, the clip-retrieval
/knn-service, and reloads after another writer saved."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexes import copy_collection, open_collection
from retrieval.config import ServeConfig

from support.keywords import keyword_vector
from support.milvus import unique_name


@pytest.fixture
def lite(lite_db: Path, collection_dir: Path) -> str:
    location = f"milvus-lite://{lite_db}/{unique_name('served')}"
    copy_collection(collection_dir, location, index="Flat")
    return location


def test_serves_a_milvus_collection_beside_a_local_one(config, encoder, lite, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    cfg = config.replace(
        collections={**config.collections, "remote": lite},
        media_roots={**config.media_roots, "remote": str(tmp_path / "media")},
        reload_interval=0.05,
    )
    with TestClient(create_app(cfg, model=encoder), base_url="http://localhost") as c:
        local = c.post("/collections/shapes/search/text", json={"text": "red", "k": 4, "modality": "image"})
        remote = c.post("/collections/remote/search/text", json={"text": "red", "k": 4, "modality": "image"})
        assert remote.status_code == 200, remote.text
        assert sorted(h["id"] for h in remote.json()["hits"]) == sorted(
            h["id"] for h in local.json()["hits"]
        )  # ties
        assert {h["metadata"]["color"] for h in remote.json()["hits"]} == {"red"}
        knn = c.post(
            "/knn-service",
            json={"text": "a blue thing", "modality": "image", "num_images": 3, "indice_name": "remote",
                  "deduplicate": False},
        )  # fmt: skip
        assert knn.status_code == 200, knn.text
        assert len(knn.json()) == 3 and all("blue" in item["caption"] for item in knn.json())
        assert c.get(f"/collections/remote/items/{knn.json()[0]['id']}/image").status_code == 200

        with open_collection(lite) as coll:  # another writer adds and saves
            coll.add(
                keyword_vector("dog")[None, :], [{"modality": "image", "caption": "a dog", "color": "dog"}]
            )
        deadline = time.monotonic() + 30
        while c.get("/collections/remote").json()["count"] != 25:
            assert time.monotonic() < deadline, "the saved change was never picked up"
            time.sleep(0.05)
        hits = c.post("/collections/remote/search/text", json={"text": "dog", "k": 1, "modality": "image"})
        assert hits.json()["hits"][0]["metadata"]["caption"] == "a dog"
        r = c.post("/collections/remote/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is True


def test_serve_cli_names_a_milvus_collection_by_its_name(lite):
    import argparse

    from retrieval.cli import build_parser
    from retrieval.cli.serve import build_config

    args = build_parser().parse_args(["serve", lite, f"other={lite}"])
    cfg: ServeConfig = build_config(argparse.Namespace(**vars(args)))
    assert cfg.collections == {lite.rsplit("/", 1)[1]: lite, "other": lite}
