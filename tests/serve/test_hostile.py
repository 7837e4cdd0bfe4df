"""What a hostile or sloppy world sends: image URLs aimed inside the network, hidden fields,
oversized and deeply nested bodies, and browser-borne requests from other origins."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from retrieval.serve import create_app
from retrieval.serve import urls as url_module
from retrieval.serve.errors import ApiError
from retrieval.serve.urls import fetch_image_url

from support.images import png_bytes
from support.keywords import keyword_vector

JSON = {"content-type": "application/json"}


# -- image URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",
        "100.127.255.254",
        "192.0.0.1",
        "198.18.0.1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "[fc00::1]",
    ],
)
def test_url_to_an_address_that_is_not_global_is_refused(address):
    host = address if address.startswith("[") or ":" not in address else f"[{address}]"
    with pytest.raises(ApiError) as err:
        fetch_image_url(f"http://{host}/x.png", max_bytes=1000, timeout=1.0, allow_private=False)
    assert err.value.status_code == 403 and err.value.code == "url_refused"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:99999/x.png",
        "http://example.com:port/x.png",
        "http://[::1/x.png",
        "http://[zz::1]/x",
    ],
)
def test_malformed_url_is_a_4xx(config, encoder, url):
    with TestClient(
        create_app(config.replace(allow_image_urls=True), model=encoder), base_url="http://localhost"
    ) as c:
        r = c.post("/collections/shapes/search/url", json={"url": url})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad_url"
        r = c.post("/knn-service", json={"image_url": url})
        assert r.status_code == 400, r.text


class _Recorder(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:
        type(self).hosts.append(self.headers.get("Host", ""))
        if self.path == "/drip.png":
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):  # one byte every 0.15 s: each read is quick, the whole takes 6 s
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.15)
            return
        body = png_bytes("green")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.hosts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_dns(monkeypatch):
    """Every name resolves to 127.0.0.1 on the first lookup and fails afterwards (a rebinding
    resolver would answer with another address); loopback counts as global for these tests."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in ("127.0.0.1", "localhost"):
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror(socket.EAI_NONAME, "second lookup: the name now points elsewhere")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(url_module, "is_global_address", lambda address: True)
    return lookups


def test_fetch_uses_the_address_that_was_checked(recorder, fake_dns):
    data = fetch_image_url(
        f"http://images.test:{recorder}/green.png", max_bytes=100_000, timeout=5.0, allow_private=False
    )
    assert data == png_bytes("green")
    assert fake_dns == ["images.test"]  # one lookup, for the check; the fetch reused its answer
    assert _Recorder.hosts == [f"images.test:{recorder}"]  # the server still sees the name


def test_check_and_fetch_use_the_same_encoding_of_an_international_name(recorder, fake_dns):
    fetch_image_url(
        f"http://faß.test:{recorder}/green.png", max_bytes=100_000, timeout=5.0, allow_private=False
    )
    assert fake_dns == ["xn--fa-hia.test"]  # IDNA 2008, as browsers and HTTP clients encode it
    assert _Recorder.hosts == [f"xn--fa-hia.test:{recorder}"]


def test_one_deadline_for_the_whole_download(recorder, fake_dns):
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        fetch_image_url(
            f"http://drip.test:{recorder}/drip.png", max_bytes=100_000, timeout=1.0, allow_private=False
        )
    assert 400 <= err.value.status_code < 500
    assert err.value.code == "url_timeout"
    assert time.monotonic() - started < 5.0  # well before the drip ends


def test_the_deadline_covers_a_hanging_name_lookup(monkeypatch):
    def hanging(*args, **kwargs):
        time.sleep(3.0)
        raise socket.gaierror(socket.EAI_AGAIN, "gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        fetch_image_url("http://slow-dns.test/x.png", max_bytes=1000, timeout=0.5, allow_private=False)
    assert err.value.code == "url_timeout"
    assert time.monotonic() - started < 2.5


# -- hidden fields ---------------------------------------------------------------------------


def test_hidden_fields_cannot_be_filtered_on(config, encoder):
    app = create_app(config.replace(hidden_fields=["path"]), model=encoder)
    with TestClient(app, base_url="http://localhost") as c:
        info = c.get("/collections/shapes").json()
        assert "path" not in info["fields"]
        for where in ({"path": "x"}, {"path": {"gte": "/"}}, {"path": ["a", "b"]}):
            r = c.post("/collections/shapes/search/text", json={"text": "red", "where": where})
            assert r.status_code == 400 and r.json()["error"] == "unknown_field", r.text
            assert "path" not in r.json()["detail"].split("fields")[-1]
            r = c.post("/knn-service", json={"text": "red", "where": where})
            assert r.status_code == 400 and r.json()["error"] == "unknown_field", r.text
        r = c.post(
            "/collections/shapes/search/image",
            files={"image": ("q.png", png_bytes("red"), "image/png")},
            data={"where": json.dumps({"path": "x"})},
        )
        assert r.status_code == 400 and r.json()["error"] == "unknown_field"


# -- request size and shape ------------------------------------------------------------------


def test_json_endpoints_have_small_body_limits(client):
    body = json.dumps({"text": "red", "where": {"color": ["x" * 20] * 5000}}).encode()  # ~120 KB
    assert len(body) < 200_000  # far below the image upload limit
    r = client.post("/collections/shapes/search/text", content=body, headers=JSON)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    r = client.post("/collections/shapes/reload", content=b"x" * 100_000, headers=JSON)
    assert r.status_code == 413
    # the image endpoints still take an image-sized body
    r = client.post("/knn-service", json={"image": "A" * 150_000})
    assert r.status_code == 400 and r.json()["error"] == "bad_image"


@pytest.mark.parametrize("path", ["/collections/shapes/search/text", "/knn-service", "/metadata"])
def test_deeply_nested_json_is_a_400(client, path):
    deep = b'{"text": "red", "where": {"color": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    r = client.post(path, content=deep, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_json"


def test_deeply_nested_where_in_a_form_is_a_400(client):
    r = client.post(
        "/collections/shapes/search/image",
        files={"image": ("q.png", png_bytes("red"), "image/png")},
        data={"where": "[" * 5000 + "]" * 5000},
    )
    assert r.status_code == 400, r.text


def test_where_list_longer_than_sqlite_variable_limit(client):
    """More values than SQLite's bound-variable limit (32766) in one ``in`` filter: the storage
    layer binds the list as one JSON parameter, so this is a plain search."""
    values = [f"c{i}" for i in range(40_000)] + ["red"]
    body = {"embedding": keyword_vector("red").tolist(), "k": 3, "where": {"color": values}}
    r = client.post("/collections/shapes/search/embedding", json=body)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["color"] == "red" for h in hits)
