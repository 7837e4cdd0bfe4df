"""API key, path traversal on the image endpoint, URL fetching rules, CORS and exposure checks."""

from __future__ import annotations

import http.server
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.config import ServeConfig
from retrieval.serve import create_app

from support.images import color_png, png_bytes
from support.keywords import DIM, KeywordEncoder, keyword_vector


@pytest.fixture
def media_client(tmp_path: Path):
    """A collection whose items point at files inside, outside and around the media root."""
    from indexes import Collection

    root = tmp_path / "media"
    inside = color_png(root / "ok.png", "red")
    outside = color_png(tmp_path / "secret.png", "blue")
    (root / "notes.txt").write_text("not an image")
    (root / "link.png").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "escape").symlink_to(tmp_path)
    with tarfile.open(root / "shard.tar", "w") as tar:
        tar.add(inside, arcname="member.png")
    refs = {
        "relative": "ok.png",
        "absolute_inside": str(inside),
        "dotdot": "../secret.png",
        "dotdot_abs": str(root / ".." / "secret.png"),
        "absolute_outside": str(outside),
        "etc_passwd": "/etc/passwd",
        "symlink_out": "link.png",
        "dir_symlink_out": "sub/escape/secret.png",
        "not_image": "notes.txt",
        "tar_inside": f"tar://{root / 'shard.tar'}#member.png",
        "tar_outside": f"tar://{tmp_path / 'elsewhere.tar'}#member.png",
        "missing": "nope.png",
    }
    names = list(refs)
    with Collection.create(tmp_path / "coll", dim=DIM, index="Flat") as coll:
        ids = coll.add(
            np.stack([keyword_vector("red")] * len(names)),
            [{"name": n, "path": refs[n], "modality": "image"} for n in names],
        )
    cfg = ServeConfig(
        collections={"c": str(tmp_path / "coll")}, media_roots={"c": str(root)}, reload_interval=0
    )
    with TestClient(create_app(cfg, model=KeywordEncoder()), base_url="http://localhost") as client:
        yield client, dict(zip(names, ids.tolist()))


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("dotdot", 403, "outside_media_root"),
        ("dotdot_abs", 403, "outside_media_root"),
        ("absolute_outside", 403, "outside_media_root"),
        ("etc_passwd", 403, "outside_media_root"),
        ("symlink_out", 403, "outside_media_root"),
        ("dir_symlink_out", 403, "outside_media_root"),
        ("not_image", 403, "not_an_image"),
        ("tar_outside", 403, "outside_media_root"),
        ("missing", 404, "missing_image"),
    ],
)
def test_image_endpoint_refuses_files_outside_the_media_root(media_client, name, status, code):
    client, ids = media_client
    r = client.get(f"/collections/c/items/{ids[name]}/image")
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert b"PNG" not in r.content


@pytest.mark.parametrize("name", ["relative", "absolute_inside", "tar_inside"])
def test_image_endpoint_serves_files_inside_the_media_root(media_client, name):
    client, ids = media_client
    r = client.get(f"/collections/c/items/{ids[name]}/image")
    assert r.status_code == 200, r.text
    assert r.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "path", ["/collections/c/items/..%2F..%2Fetc%2Fpasswd/image", "/collections/c/items/../../etc/passwd"]
)
def test_traversal_in_the_url_is_not_a_path(media_client, path):
    client, _ = media_client
    r = client.get(path)
    assert 400 <= r.status_code < 500
    assert "root:" not in r.text


def test_api_key(config, encoder):
    app = create_app(config.replace(api_key="s3cret"), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        for method, path, kwargs in [
            ("post", "/collections/shapes/search/text", {"json": {"text": "red"}}),
            ("get", "/collections/shapes", {}),
            ("get", "/collections/shapes/items/0/image", {}),
            ("post", "/knn-service", {"json": {"text": "red"}}),
            ("get", "/indices-list", {}),
            ("post", "/metadata", {"json": {"ids": [0]}}),
        ]:
            r = getattr(c, method)(path, **kwargs)
            assert r.status_code == 401, path
            assert r.json()["error"] == "unauthorized"
            r = getattr(c, method)(path, headers={"X-API-Key": "wrong"}, **kwargs)
            assert r.status_code == 401, path
            r = getattr(c, method)(path, headers={"X-API-Key": "s3cret"}, **kwargs)
            assert r.status_code == 200, (path, r.text)
        # the page, liveness and the API description stay public
        for path in ["/", "/healthz", "/openapi.json"]:
            assert c.get(path).status_code == 200


def test_cors_only_when_configured(config, encoder):
    with TestClient(create_app(config, model=encoder), base_url="http://localhost") as c:
        r = c.get("/indices-list", headers={"Origin": "http://front.example"})
        assert "access-control-allow-origin" not in r.headers
    app = create_app(config.replace(cors_origins=["http://front.example"]), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        r = c.options(
            "/knn-service",
            headers={"Origin": "http://front.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://front.example"


def test_non_loopback_bind_needs_an_api_key():
    from retrieval.serve.server import check_exposure, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    check_exposure(ServeConfig(collections={"a": "x"}))
    with pytest.raises(ValueError, match="API key"):
        check_exposure(ServeConfig(collections={"a": "x"}, host="0.0.0.0"))
    check_exposure(ServeConfig(collections={"a": "x"}, host="0.0.0.0", api_key="k"))
    check_exposure(ServeConfig(collections={"a": "x"}, host="0.0.0.0", allow_insecure=True))


class _PngHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/green.png":
            body = png_bytes("green")
            self.send_response(200)
        elif self.path == "/big.png":
            body = b"\x89PNG" + b"0" * 300_000
            self.send_response(200)
        else:
            body = b""
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PngHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_image_urls(config, encoder, image_server):
    url = f"{image_server}/green.png"
    # enabled, but loopback hosts are refused (server-side request forgery)
    app = create_app(config.replace(allow_image_urls=True), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/collections/shapes/search/url", json={"url": url, "k": 1})
        assert r.status_code == 403 and r.json()["error"] == "url_refused"
        r = c.post("/collections/shapes/search/url", json={"url": "file:///etc/passwd"})
        assert r.status_code == 400 and r.json()["error"] == "bad_url"
    app = create_app(config.replace(allow_image_urls=True, allow_private_urls=True), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/collections/shapes/search/url", json={"url": url, "k": 1, "modality": "image"})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["metadata"]["color"] == "green"
        r = c.post("/knn-service", json={"image_url": url, "num_images": 1})
        assert r.status_code == 200 and r.json()[0]["color"] == "green"
        r = c.post("/collections/shapes/search/url", json={"url": f"{image_server}/redirect"})
        assert r.status_code == 400 and "302" in r.json()["detail"]
        r = c.post("/collections/shapes/search/url", json={"url": f"{image_server}/big.png"})
        assert r.status_code == 413


def test_a_public_bind_without_allowed_hosts_is_warned_about(caplog):
    from retrieval.serve.server import check_exposure

    with caplog.at_level("WARNING", logger="retrieval.serve.server"):
        check_exposure(ServeConfig(collections={"a": "x"}, host="0.0.0.0", api_key="k"))
    assert "--allowed-host" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="retrieval.serve.server"):
        check_exposure(
            ServeConfig(collections={"a": "x"}, host="0.0.0.0", api_key="k", allowed_hosts=("a.example",))
        )
    assert "--allowed-host" not in caplog.text
