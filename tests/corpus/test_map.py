"""`draw_map` / `retrieval map`: a self-contained page (nothing fetched), thumbnails within budget,
colours by field, a PNG; PCA against an SVD reference; the page in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.corpus import EmptyCollectionError, MapConfig, draw_map
from retrieval.corpus.projection import pca_2d, project, umap_available

from support.duplicates import make_collection, planted
from support.images import write_image
from support.keywords import COLORS

PCA = MapConfig(method="pca", progress=False, png_px=300)


def _points(page: str) -> dict:
    match = re.search(r'<script id="points" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


@pytest.fixture
def picture_collection(tmp_path: Path) -> Path:
    """30 images (real PNG files) and 10 captions, with a colour field, a numeric score and a hostile caption."""
    vectors, _ = planted(40, seed=2)
    metadata = []
    names = list(COLORS)
    for i in range(40):
        colour = names[i % len(names)]
        if i < 30:
            path = tmp_path / "media" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            write_image(path, colour, seed=i)
            metadata.append({"modality": "image", "path": str(path), "colour": colour, "score": i / 3})
        else:
            metadata.append(
                {"modality": "text", "caption": f"a {colour} thing", "colour": colour, "score": i / 3}
            )
    metadata[31]["caption"] = "</script><script>alert(1)</script> & <b>bold</b>"
    return make_collection(tmp_path / "coll", vectors, metadata)


def test_the_page_is_self_contained_and_holds_every_point(picture_collection: Path, tmp_path: Path) -> None:
    result = draw_map(picture_collection, tmp_path / "map.html", PCA.replace(color_by="colour"))
    page = (tmp_path / "map.html").read_text()
    data = _points(page)
    assert result.points == len(data["x"]) == 40 and result.method == "pca"
    assert "default-src 'none'" in page and "img-src data:" in page  # the CSP forbids any fetch
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) and "<link" not in page
    assert "</script><script>alert" not in page  # a caption cannot end the data element
    assert "alert(1)" in json.dumps(data["labels"])  # ... and still reaches the page as text
    assert data["kind"] == "categorical" and sorted(data["categories"]) == sorted(COLORS)
    assert result.thumbnails == 30 and all(
        uri.startswith("data:image/jpeg;base64,") for uri in data["thumbs"]
    )
    assert sum(t >= 0 for t in data["t"]) == 30  # every image has its thumbnail, no caption has one
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_budget_numeric_colours_and_one_modality(picture_collection: Path, tmp_path: Path) -> None:
    small = draw_map(
        picture_collection, tmp_path / "a.html", PCA.replace(sample=12, thumbnail_bytes=3000), png=None
    )
    data = _points((tmp_path / "a.html").read_text())
    assert small.points == 12 and small.population == 40 and not (tmp_path / "a.png").exists()
    assert sum(len(uri) for uri in data["thumbs"]) <= 3000 and small.thumbnails >= 1
    numeric = draw_map(
        picture_collection, tmp_path / "b.html", PCA.replace(color_by="score", max_categories=5)
    )
    data = _points((tmp_path / "b.html").read_text())
    assert numeric.color_by == "score" and data["kind"] == "numeric" and data["range"] == [0, 13]
    assert min(data["c"]) == 0 and max(data["c"]) == 1
    texts = draw_map(picture_collection, tmp_path / "c.html", PCA.replace(modality="texts"))
    data = _points((tmp_path / "c.html").read_text())
    assert texts.points == 10 and texts.thumbnails == 0 and "a red thing" in data["labels"]
    both = draw_map(picture_collection, tmp_path / "d.html", PCA)
    assert both.color_by == "modality"  # a collection of both: coloured by modality by default


def test_bad_input(picture_collection: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no metadata field 'size'.*colour"):
        draw_map(picture_collection, tmp_path / "x.html", PCA.replace(color_by="size"))
    empty = make_collection(tmp_path / "empty", np.zeros((0, 8), np.float32))
    with pytest.raises(EmptyCollectionError):
        draw_map(empty, tmp_path / "y.html", PCA)
    with pytest.raises(ValueError, match=r"MapConfig\.sample must be >= 1"):
        MapConfig(sample=0)
    bare = make_collection(tmp_path / "bare", planted(9, groups=3)[0])  # no metadata at all
    assert draw_map(bare, tmp_path / "z.html", PCA).points == 9


def test_pca_equals_the_svd_projection() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    got = pca_2d(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-4)
    assert pca_2d(np.zeros((0, 4))).shape == (0, 2) and pca_2d(np.ones((1, 3))).shape == (1, 2)
    assert project(x, "pca")[1] == "pca"
    if not umap_available():
        assert project(x, "auto")[1] == "pca"
        with pytest.raises(ImportError, match="pip install umap-learn"):
            project(x, "umap")


@pytest.mark.slow
def test_umap_when_installed() -> None:
    pytest.importorskip("umap", reason="umap-learn is not installed (the map extra)")
    x = planted(200, dim=16, groups=10, size=10, seed=1)[0]
    points, method = project(x, "auto", seed=0)
    assert method == "umap" and points.shape == (200, 2) and np.isfinite(points).all()


def test_cli_map(picture_collection: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "map",
        str(picture_collection),
        "--out",
        str(tmp_path / "m.html"),
        "--method",
        "pca",
        "--color-by",
        "colour",
    ]
    assert main([*argv, "--sample", "20", "--no-progress"]) == 0
    assert "map of 20 of 40 items (pca, coloured by colour" in capsys.readouterr().out
    assert (tmp_path / "m.png").exists()
    assert main(["map", str(picture_collection), "--out", str(tmp_path / "n.html"), "--sample", "0"]) == 1
    assert "sample must be >= 1; received 0" in capsys.readouterr().err
    assert (
        main(["map", str(picture_collection), "--out", str(tmp_path / "n.html"), "--color-by", "nope"]) == 1
    )
    assert "no metadata field 'nope'" in capsys.readouterr().err


@pytest.mark.browser
def test_the_page_in_chromium_offline(picture_collection: Path, tmp_path: Path) -> None:
    """Hovering a point shows its thumbnail and caption; no request leaves the page."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    import shutil

    chromium = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(c).exists()), None)
    chromium = chromium or shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed")
    draw_map(picture_collection, tmp_path / "map.html", PCA, png=None)
    data = _points((tmp_path / "map.html").read_text())
    width, height = 900, 700
    x, y = np.array(data["x"]), np.array(data["y"])
    w, h = width, height - 33  # the page's own fit (retrieval.corpus.map_page)
    s = min((w - 40) / max(x.max() - x.min(), 1e-9), (h - 40) / max(y.max() - y.min(), 1e-9))
    ox, oy = (w - s * (x.max() + x.min())) / 2, (h + s * (y.max() + y.min())) / 2
    target = next(i for i, t in enumerate(data["t"]) if t >= 0)
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
        except Exception as exc:
            pytest.skip(f"Chromium cannot start here: {exc}")
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((tmp_path / "map.html").as_uri())
            page.mouse.move(x[target] * s + ox, -y[target] * s + oy + 33)
            page.wait_for_selector("#tip", state="visible", timeout=10_000)
            assert page.text_content("#meta").startswith(f"id {target}") or page.text_content("#label")
            assert page.get_attribute("#thumb", "src").startswith("data:image/jpeg")
            assert page.locator("#legend div").count() == 2  # image, text
        finally:
            browser.close()
    assert not errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
