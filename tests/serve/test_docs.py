"""The API documentation works offline: /docs and /redoc load only this server's own files (the
pinned fastapi-offline package's Swagger UI and ReDoc builds), under a Content Security Policy
with frame-ancestors; no page of the service refers to another site. (In a real browser:
tests/serve/test_browser.py.)"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

PAGES = ["/", "/docs", "/redoc"]


class _Refs(HTMLParser):
    """Every URL a page refers to (src, href, action...) and whether it has inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "action", "data-spec", "poster", "srcset") and value:
                self.urls.append(value)
        self._in_script = tag == "script" and not dict(attrs).get("src")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        self._in_script = False


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


@pytest.mark.parametrize("path", PAGES)
def test_no_page_refers_to_another_site(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    base = "http://localhost" + path
    for url in _refs(r.text).urls:
        absolute = urljoin(base, url)
        assert urlsplit(absolute).scheme in ("http", "data") and urlsplit(absolute).netloc in (
            "localhost",
            "",
        ), url
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "http:" not in csp and "https:" not in csp  # no other site is allowed to supply anything


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_this_server(client, path):
    r = client.get(path)
    refs = _refs(r.text)
    assert refs.inline_scripts == 0  # so the policy can forbid inline scripts
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in r.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    scripts = [urljoin("http://localhost" + path, u) for u in refs.urls if u.endswith(".js")]
    assert scripts
    for url in refs.urls:
        asset = client.get(urljoin("http://localhost" + path, url))
        assert asset.status_code == 200, url
        assert len(asset.content) > 100
    spec = client.get(urljoin("http://localhost" + path, "openapi.json"))
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "siamese-retrieval"


def test_docs_assets_are_public_and_limited_to_known_files(config, encoder):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    with TestClient(create_app(config.replace(api_key="k"), model=encoder), base_url="http://localhost") as c:
        for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/redoc-init.js"):
            assert c.get(path).status_code == 200, path
        for name in ("../app.py", "..%2F..%2Fconfig.py", "index.html", "nope.js"):
            r = c.get("/docs/assets/" + name)
            assert r.status_code in (401, 404), (name, r.status_code)  # 401: the path left the assets
            assert "error" in r.json()
        assert c.get("/collections").status_code == 401
