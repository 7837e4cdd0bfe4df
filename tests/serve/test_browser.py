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
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from retrieval.serve import create_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, model=encoder), host="127.0.0.1", port=port, log_level="warning")
    )
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
