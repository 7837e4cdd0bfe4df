"""Thumbnails: made once per file and size, in their own threads (searches never wait behind them),
kept within a memory bound, made anew when the file changes, and never queued without end (the
original is sent instead)."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.serve import create_app

from support.images import color_png
from support.keywords import KeywordEncoder


@pytest.fixture
def big_squares(config, collection_dir, tmp_path):
    """The service fixtures' squares, rewritten 300 px wide so thumbnails of them are made."""
    for png in (tmp_path / "media").rglob("*.png"):
        color = png.parent.name
        color_png(png, color, 300)
    return config


class _Counting:
    """Counts (and optionally holds) the thumbnails Pillow makes."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        original = Image.Image.thumbnail

        def thumbnail(image, *args, **kwargs):
            self.calls += 1
            self.entered.set()
            self.hold.wait(10)
            return original(image, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "thumbnail", thumbnail)


def test_a_thumbnail_is_made_once_per_file_and_size(big_squares, monkeypatch):
    counting = _Counting(monkeypatch)
    with TestClient(create_app(big_squares, model=KeywordEncoder()), base_url="http://localhost") as c:
        for _ in range(5):
            r = c.get("/collections/shapes/items/0/image?max_side=64")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert max(Image.open(io.BytesIO(r.content)).size) == 64
        assert counting.calls == 1
        c.get("/collections/shapes/items/0/image?max_side=32")
        assert counting.calls == 2  # another size is another thumbnail
        with ThreadPoolExecutor(8) as pool:  # concurrent requests for one thumbnail: one decode
            counting.hold.clear()
            futures = [pool.submit(c.get, "/collections/shapes/items/1/image?max_side=64") for _ in range(8)]
            assert counting.entered.wait(5)
            time.sleep(0.3)
            counting.hold.set()
            assert all(f.result().status_code == 200 for f in futures)
        assert counting.calls == 3


def test_a_changed_file_gets_a_new_thumbnail(big_squares, tmp_path):
    with TestClient(create_app(big_squares, model=KeywordEncoder()), base_url="http://localhost") as c:
        path = c.get("/collections/shapes/items/0").json()["metadata"]["path"]
        first = c.get("/collections/shapes/items/0/image?max_side=64").content
        png = tmp_path / "media" / path
        time.sleep(0.01)
        Image.new("RGB", (300, 300), (0, 0, 250)).save(png)
        second = c.get("/collections/shapes/items/0/image?max_side=64").content
        assert first != second
        pixel = Image.open(io.BytesIO(second)).convert("RGB").getpixel((10, 10))
        assert pixel[2] > 200 and pixel[0] < 60


def test_the_cache_stays_within_its_memory_bound(big_squares):
    config = big_squares.replace(thumbnail_cache_bytes=3000)
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        cache = c.app.state.service.thumbnails
        for item in range(16):
            for side in (16, 32, 48):
                assert c.get(f"/collections/shapes/items/{item}/image?max_side={side}").status_code == 200
                assert cache.cached_bytes <= 3000
        assert cache.made == 48


def test_searches_do_not_wait_behind_thumbnails(big_squares, monkeypatch):
    """One worker thread for queries: while a thumbnail is being made, text searches still answer."""
    counting = _Counting(monkeypatch)
    counting.hold.clear()
    config = big_squares.replace(workers=1)
    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as c:
        with ThreadPoolExecutor(2) as pool:
            thumb = pool.submit(c.get, "/collections/shapes/items/2/image?max_side=64")
            try:
                assert counting.entered.wait(5)
                started = time.monotonic()
                r = c.post("/collections/shapes/search/text", json={"text": "red", "k": 1})
                took = time.monotonic() - started
            finally:
                counting.hold.set()
            assert thumb.result().status_code == 200
        assert r.status_code == 200 and took < 5.0


def test_too_many_thumbnails_in_the_making_get_the_original(big_squares, monkeypatch):
    counting = _Counting(monkeypatch)
    counting.hold.clear()
    with TestClient(create_app(big_squares, model=KeywordEncoder()), base_url="http://localhost") as c:
        c.app.state.service.thumbnails.max_pending = 1
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.get, "/collections/shapes/items/3/image?max_side=64")
            try:
                assert counting.entered.wait(5)
                r = c.get("/collections/shapes/items/4/image?max_side=64")
            finally:
                counting.hold.set()
            assert first.result().status_code == 200
        # no decoding, no queue: the file as it is, not to be cached under the thumbnail's address
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-thumbnail"] == "busy" and r.headers["cache-control"] == "no-store"
        assert counting.calls == 1
        r = c.get("/collections/shapes/items/4/image?max_side=64")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
