"""Many threads query while another writer adds items and the service reloads the collection."""

from __future__ import annotations

import threading

import numpy as np
from fastapi.testclient import TestClient

from retrieval.serve import create_app

from support.images import png_bytes
from support.keywords import SQUARES, keyword_vector


def test_queries_stay_correct_while_the_collection_is_rewritten_and_reloaded(config, encoder, collection_dir):
    from indexes import Collection

    app = create_app(config.replace(reload_interval=0.02, workers=4), model=encoder)
    errors: list[str] = []
    counts: list[int] = []
    done: list[int] = []
    stop = threading.Event()

    def query(client: TestClient, worker: int) -> None:
        i = 0
        while not stop.is_set() or i < 5:
            color = list(SQUARES)[(worker + i) % len(SQUARES)]
            if i % 3 == 2:
                r = client.post(
                    "/collections/shapes/search/image",
                    files={"image": ("q.png", png_bytes(color), "image/png")},
                    data={"k": "4", "modality": "image"},
                )
            else:
                r = client.post(
                    "/collections/shapes/search/text", json={"text": color, "k": 4, "modality": "image"}
                )
            i += 1
            done.append(1)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text}")
                continue
            hits = r.json()["hits"]
            scores = [h["score"] for h in hits]
            if len(hits) != 4 or scores != sorted(scores, reverse=True):
                errors.append(f"bad hits {hits}")
            elif hits[0]["metadata"].get("color") != color:
                errors.append(f"wanted {color}, got {hits[0]['metadata']}")
            if i % 5 == 0:
                counts.append(client.get("/collections/shapes").json()["count"])

    added = 0
    with TestClient(app, base_url="http://localhost") as client:
        threads = [threading.Thread(target=query, args=(client, w)) for w in range(8)]
        for t in threads:
            t.start()
        for batch in range(6):
            with Collection.open(collection_dir) as coll:
                vecs = np.stack([keyword_vector(c) for c in SQUARES])
                meta = [
                    {"modality": "image", "color": c, "caption": f"added {batch}", "size": 10}
                    for c in SQUARES
                ]
                coll.add(vecs, meta)
                added += len(meta)
            if batch % 2:
                r = client.post("/collections/shapes/reload")
                if r.status_code != 200:
                    errors.append(f"reload: {r.status_code} {r.text}")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        client.post("/collections/shapes/reload")
        final = client.get("/collections/shapes").json()
    assert not errors, errors[:5]
    assert len(done) >= 40
    assert final["count"] == 24 + added
    assert final["reloads"] >= 3
    assert counts and min(counts) >= 24 and max(counts) <= 24 + added
