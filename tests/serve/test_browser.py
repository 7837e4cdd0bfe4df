"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped, with the reason, when Playwright for Python or the Chromium binary is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from support.images import png_bytes

pytestmark = pytest.mark.browser

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    found = os.environ.get("RETRIEVAL_CHROMIUM") or next(
        (c for c in CHROMIUM_CANDIDATES if os.access(c, os.X_OK)), None
    )
    return found or shutil.which("chromium")


def _until(check, what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` from Python (the page's CSP forbids the eval behind wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def _img_loaded(img) -> bool:
    return (
        bool(img.get_property("complete").json_value()) and img.get_property("naturalWidth").json_value() > 0
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(config, encoder):
    """The app under uvicorn as `retrieval serve` runs it, on a free loopback port, in a thread;
    yields its base URL."""
    import uvicorn

    from retrieval.serve import create_app
    from retrieval.serve.server import uvicorn_config

    port = _free_port()
    config = config.replace(port=port)
    server = uvicorn.Server(uvicorn_config(config, create_app(config, model=encoder), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_server(config, encoder):
    with _serving(config, encoder) as url:
        yield url


@pytest.fixture
def chromium() -> str:
    """The Chromium binary, checked before any server starts; skips with the reason when absent."""
    pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (the dev extra)"
    )
    found = _chromium()
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or `make browser`)")
    return found


def test_search_page_in_chromium(chromium: str, live_server: str, tmp_path: Path):
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken or sandbox-less Chromium: not the page's fault
            pytest.skip(f"Chromium at {chromium} cannot start here: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
            )
            page.goto(live_server)
            page.set_default_timeout(15_000)
            page.wait_for_selector("#collection option", state="attached")
            page.fill("#query", "red")
            page.click("#search-btn")
            try:
                page.wait_for_selector(".result img")
            except Exception:
                raise AssertionError(
                    f"no thumbnails; status {page.inner_text('#status')!r}, errors {errors}"
                ) from None
            _until(
                lambda: all(_img_loaded(i) for i in page.query_selector_all(".result img")), "thumbnails load"
            )
            first = page.locator(".result .caption").all_inner_texts()
            assert first[:4] == ["a red square"] * 4
            assert "results for" in page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "page-text.png"), full_page=True)

            # click a result: search by that item
            page.fill("#query", "")
            page.select_option("#modality", "")
            page.locator(".result").first.click()
            _until(lambda: "item " in page.inner_text("#status"), "the item search runs")
            page.wait_for_selector(".result")
            ids = page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.id)")
            assert ids, "no results after clicking"
            # everything with the clicked square's vector: four red squares and the word "red", tied
            top = page.locator(".result .caption").all_inner_texts()[:5]
            assert sorted(top) == ["a red square"] * 4 + ["the word red"]

            # a new text query changes the grid
            page.select_option("#modality", "image")
            page.fill("#query", "blue")
            page.click("#search-btn")
            _until(
                lambda: page.locator(".result .caption").all_inner_texts()[:4] == ["a blue square"] * 4,
                "blue results",
            )
            # an image chosen in the drop zone's file input searches by that image
            query = tmp_path / "query.png"
            query.write_bytes(png_bytes("green"))
            page.set_input_files("#file", str(query))
            _until(lambda: "your image" in page.inner_text("#status"), "the image search runs")
            _until(
                lambda: page.locator(".result .caption").all_inner_texts()[:4] == ["a green square"] * 4,
                "green results",
            )
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            shot = os.environ.get("RETRIEVAL_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
            assert not errors, errors
        finally:
            browser.close()


def test_search_page_asks_for_the_api_key(chromium: str, config, encoder):
    """With an API key set, the page prompts for it once, then searches and loads thumbnails with it."""
    from playwright import sync_api

    with _serving(config.replace(api_key="let-me-in"), encoder) as url, sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.skip(f"Chromium at {chromium} cannot start here: {exc}")
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            prompts: list[str] = []

            def answer(dialog) -> None:
                prompts.append(dialog.message)
                dialog.accept("let-me-in")

            page.on("dialog", answer)
            page.goto(url)
            page.wait_for_selector("#collection option", state="attached")
            page.fill("#query", "yellow")
            page.click("#search-btn")
            page.wait_for_selector(".result img")
            _until(
                lambda: all(_img_loaded(i) for i in page.query_selector_all(".result img")), "thumbnails load"
            )
            assert page.locator(".result .caption").all_inner_texts()[:4] == ["a yellow square"] * 4
            assert len(prompts) == 1 and "API key" in prompts[0]
        finally:
            browser.close()


def _launch(pw, chromium: str):
    try:
        return pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    except Exception as exc:  # a broken or sandbox-less Chromium: not the page's fault
        pytest.skip(f"Chromium at {chromium} cannot start here: {exc}")


def _watch(page, base: str, blocked: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Requests to other sites, and page errors / console errors. Requests the page's CSP refused go
    to ``blocked`` when given (they never leave the browser)."""
    elsewhere: list[str] = []
    errors: list[str] = []

    def finished(req) -> None:
        if not req.url.startswith((base, "data:", "blob:")):
            elsewhere.append(f"{req.resource_type} {req.url}")

    def failed(req) -> None:
        if not req.url.startswith((base, "data:", "blob:")):
            if blocked is not None and req.failure == "csp":
                blocked.append(f"{req.resource_type} {req.url}")
            else:
                elsewhere.append(f"{req.resource_type} {req.url} failed: {req.failure}")

    page.on("requestfinished", finished)
    page.on("requestfailed", failed)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    return elsewhere, errors


def test_page_scores_agree_with_the_cli_and_the_api(chromium: str, hubness_setup, capsys):
    """The fourth surface of one scoring story: `/?q=...` on a server with hubness correction shows the
    order and scores `retrieval search --hubness` prints and the JSON API and /knn-service return, each
    card with its modality badge, corrected score, cosine and the tooltip that explains them."""
    import json

    import httpx
    from playwright import sync_api

    from retrieval.cli import main

    model_dir, coll, config = hubness_setup
    query, k = "a red dog", 8
    capsys.readouterr()
    argv = [
        "search",
        str(coll),
        query,
        "-k",
        str(k),
        "--json",
        "--model",
        str(model_dir),
        "--hubness",
        "isoftmax",
    ]
    assert main(argv) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with _serving(config, None) as base, sync_api.sync_playwright() as pw:
        api = httpx.post(
            f"{base}collections/tiny/search/text",
            json={"text": query, "k": k, "modality": "image"},
            timeout=30,
        ).json()
        knn = httpx.post(
            f"{base}knn-service", json={"text": query, "num_images": k, "modality": "image"}, timeout=30
        ).json()
        browser = _launch(pw, chromium)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(15_000)
            elsewhere, errors = _watch(page, base)
            page.goto(f"{base}?q=a%20red%20dog&k={k}&modality=image")
            _until(lambda: len(page.query_selector_all(".result")) == k, "the linked query's results")
            cards = page.query_selector_all(".result")
            ids = [int(c.get_attribute("data-id")) for c in cards]
            scores = [c.query_selector(".score").inner_text() for c in cards]
            cosines = [c.query_selector(".cosine").inner_text() for c in cards]
            badges = [c.query_selector(".badge").inner_text().lower() for c in cards]
            tooltip = cards[0].query_selector(".score").get_attribute("title")
            status = page.inner_text("#status")
            option = page.inner_text("#collection option")
            assert page.input_value("#query") == query
            assert not elsewhere and not errors, (elsewhere, errors)
        finally:
            browser.close()
    assert ids == [h["id"] for h in cli] == [h["id"] for h in api["hits"]] == [h["id"] for h in knn]
    assert scores == [f"{h['score']:.3f}" for h in cli] == [f"{h['score']:.3f}" for h in api["hits"]]
    assert scores == [f"{h['similarity']:.3f}" for h in knn]
    assert cosines == [f"cos {h['cosine']:.3f}" for h in cli]
    assert badges == ["image"] * k
    assert "hubness-corrected" in tooltip and "cosine" in tooltip
    assert "8 images" in status and "isoftmax" in status
    assert "32 images" in option and "32 texts" in option


@pytest.mark.parametrize(("path", "ready"), [("docs", ".swagger-ui .info .title"), ("redoc", ".api-info h1")])
def test_api_docs_work_offline_in_chromium(chromium: str, config, encoder, path: str, ready: str):
    """Swagger UI and ReDoc render from this server's own files only, under their CSP, with no error.
    (ReDoc's footer asks for its maker's logo from a CDN: the CSP refuses it, so nothing leaves the
    browser; that image is the only refusal allowed.)"""
    from playwright import sync_api

    keyed = config.replace(api_key="k")
    with _serving(keyed, encoder) as base, sync_api.sync_playwright() as pw:
        browser = _launch(pw, chromium)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            blocked: list[str] = []
            elsewhere, errors = _watch(page, base, blocked)
            page.goto(base + path)
            page.wait_for_selector(ready)
            assert "siamese-retrieval" in page.inner_text(ready)
            if path == "docs":
                page.wait_for_selector(".btn.authorize")  # the API key is declared: Swagger can send it
            page.wait_for_timeout(500)
            assert not elsewhere, elsewhere
            assert all(b.startswith("image ") for b in blocked), blocked
            errors = [e for e in errors if not ("Content Security Policy" in e and "image" in e)]
            assert not errors, errors
        finally:
            browser.close()


def test_hybrid_toggle_in_chromium(chromium: str, config, collection_dir: Path, encoder, tmp_path: Path):
    """A collection with a text index shows the "words too" toggle; checked, text queries are hybrid."""
    from playwright import sync_api

    from indexes import Collection

    with Collection.open(collection_dir) as coll:
        coll.set_text_fields(["caption"])
    with _serving(config, encoder) as url, sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.skip(f"Chromium at {chromium} cannot start here: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(15_000)
            page.goto(url)
            page.wait_for_selector("#collection option", state="attached")
            assert page.is_visible("#hybrid-label"), "the toggle shows for a collection with a text index"
            page.check("#hybrid")
            page.fill("#query", "blue")
            page.click("#search-btn")
            _until(lambda: "scores: rrf" in page.inner_text("#status"), "the hybrid answer arrives")
            assert page.locator(".result .lexical").count() > 0, "BM25 scores are shown beside the fused ones"
            assert "hybrid=1" in page.url
            page.screenshot(path=str(tmp_path / "page-hybrid.png"), full_page=True)
            page.uncheck("#hybrid")  # a change of the toggle runs the query again
            _until(lambda: "scores: cosine" in page.inner_text("#status"), "the dense answer arrives")
            assert not errors, errors
        finally:
            browser.close()
