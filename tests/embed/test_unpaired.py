"""Corpora without pairs, end to end: a photo folder without captions and a caption list are embedded,
searched (Searcher and the service), and evaluated against; corpora that give nothing are errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexes import Collection
from retrieval.config import ServeConfig
from retrieval.data import EmptyCorpusError, read_pairs
from retrieval.embed import NothingEmbeddedError, embed_corpus
from retrieval.evaluate import evaluate_model
from retrieval.search import Searcher

from support.images import png_bytes, write_image
from support.keywords import KeywordEncoder

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Six noisy colour photos, no sidecar files."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(COLOURS):
        write_image(folder / f"{colour}.png", colour, seed=i)
    return folder


def _serve(name: str, collection: Path, media: Path | None, encoder: KeywordEncoder):
    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    config = ServeConfig(
        collections={name: str(collection)},
        media_roots={name: str(media)} if media else {},
        reload_interval=0.0,
        workers=1,
    )
    return TestClient(create_app(config, model=encoder), base_url="http://localhost")


def _test_manifest(path: Path, images: dict[str, Path]) -> Path:
    rows = [{"image": str(p), "caption": [f"a {c} thing", f"something {c}"]} for c, p in images.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_photo_folder_without_captions_end_to_end(photos, config, tmp_path):
    model = KeywordEncoder()
    coll = tmp_path / "photos.coll"
    summary = embed_corpus(model, photos, coll, config)
    assert summary.embedded == 6 and summary.skipped == {} and not summary.examples
    with Collection.open(coll, read_only=True) as c:
        metadata = c.get(c.ids())
    assert {m["modality"] for m in metadata} == {"image"} and all("caption" not in m for m in metadata)
    assert {m["image_id"] for m in metadata} == {str(photos / f"{c}.png") for c in COLOURS}
    # searched by text
    with Searcher(model, coll) as searcher:
        assert Path(searcher.text_to_image("something blue", k=1)[0].metadata["path"]).name == "blue.png"
        assert searcher.text_to_text("blue", k=3) == []  # no caption in it
    with _serve("photos", coll, photos, model) as client:
        r = client.post("/collections/photos/search/text", json={"text": "a purple one", "k": 2})
        assert r.status_code == 200, r.text
        best = r.json()["hits"][0]
        assert Path(best["metadata"]["path"]).name == "purple.png"
        assert client.get(best["image_url"]).status_code == 200
    # resumable: nothing new, then one new photo
    again = embed_corpus(model, photos, coll, config)
    assert again.embedded == 0 and again.already_done == 6
    write_image(photos / "white.png", "white", seed=9)
    assert embed_corpus(model, photos, coll, config).embedded == 1
    # evaluated against: the evaluated images are the collection's own
    pairs = read_pairs(_test_manifest(tmp_path / "test.jsonl", {c: photos / f"{c}.png" for c in COLOURS[:4]}))
    with Collection.open(coll, read_only=True) as c:
        result = evaluate_model(model, pairs, ks=(1, 3), collection=c)
    assert result.index is not None and result.index.added_images == 0 and result.index.n_text_items == 0
    assert result.metrics["index/t2i/R@1"] == pytest.approx(result.index.exact["t2i/R@1"])
    assert not any(key.startswith("index/i2t") for key in result.metrics)  # no caption to find


def test_eval_embeds_the_evaluated_images_a_collection_lacks(photos, config, tmp_path):
    model = KeywordEncoder()
    coll = tmp_path / "photos.coll"
    embed_corpus(model, photos, coll, config)
    elsewhere = tmp_path / "test_images"
    elsewhere.mkdir()
    for i, colour in enumerate(("black", "white")):
        write_image(elsewhere / f"{colour}.png", colour, seed=20 + i)
    pairs = read_pairs(
        _test_manifest(tmp_path / "test.jsonl", {c: elsewhere / f"{c}.png" for c in ("black", "white")})
    )
    before = sorted(p.name for p in coll.rglob("*"))
    with Collection.open(coll, read_only=True) as c:
        result = evaluate_model(model, pairs, ks=(1, 5), collection=c)
        assert len(c) == 6
    assert sorted(p.name for p in coll.rglob("*")) == before  # the collection is not written
    index = result.index
    assert index is not None and index.added_images == 2 and index.n_image_items == 6
    assert "added to a scratch copy" in index.notes[0]
    assert index.exact["t2i/n_queries"] == 4  # every evaluated caption, among 8 images
    assert result.metrics["index/t2i/R@1"] == pytest.approx(index.exact["t2i/R@1"])


def test_caption_list_end_to_end(config, tmp_path):
    model = KeywordEncoder()
    captions = tmp_path / "captions.txt"
    captions.write_text("a red car\na blue boat\n\na green tree\na red car\n", encoding="utf-8")
    coll = tmp_path / "captions.coll"
    summary = embed_corpus(model, captions, coll, config.replace(modality="texts"))
    assert summary.embedded == 4 and summary.skipped == {}  # the repeated line is kept
    with Collection.open(coll, read_only=True) as c:
        metadata = c.get(c.ids())
    assert [m["caption"] for m in metadata] == ["a red car", "a blue boat", "a green tree", "a red car"]
    assert all(set(m) == {"modality", "caption"} for m in metadata)
    assert embed_corpus(model, captions, coll, config.replace(modality="texts")).already_done == 4
    query = tmp_path / "q.png"
    query.write_bytes(png_bytes("green"))
    with Searcher(model, coll) as searcher:
        assert searcher.image_to_text(str(query), k=1)[0].metadata["caption"] == "a green tree"
    with _serve("captions", coll, None, model) as client:
        r = client.post(
            "/collections/captions/search/image",
            files={"image": ("q.png", png_bytes("blue"), "image/png")},
            data={"k": "1"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["metadata"]["caption"] == "a blue boat"
    # evaluated against: image -> text only, the evaluated captions added to a scratch copy
    images = tmp_path / "eval_images"
    images.mkdir()
    for i, colour in enumerate(("red", "blue")):
        write_image(images / f"{colour}.png", colour, seed=i)
    pairs = read_pairs(
        _test_manifest(tmp_path / "test.jsonl", {c: images / f"{c}.png" for c in ("red", "blue")})
    )
    with Collection.open(coll, read_only=True) as c:
        result = evaluate_model(model, pairs, ks=(1, 5), collection=c)
    index = result.index
    assert index is not None and index.n_image_items == 0 and index.added_texts == 4
    assert index.index and all(key.startswith("i2t/") for key in index.index)
    assert result.metrics["index/i2t/R@5"] == pytest.approx(index.exact["i2t/R@5"])


def test_manifests_with_one_column_embed_what_they_hold(photos, config, tmp_path):
    model = KeywordEncoder()
    (tmp_path / "images.csv").write_text("image\n" + "".join(f"photos/{c}.png\n" for c in COLOURS))
    assert embed_corpus(model, tmp_path / "images.csv", tmp_path / "a", config).embedded == 6
    (tmp_path / "texts.jsonl").write_text('{"caption": "a red car"}\n{"caption": ["two", "captions"]}\n')
    summary = embed_corpus(model, tmp_path / "texts.jsonl", tmp_path / "b", config)
    assert summary.embedded == 3


def test_corpora_that_give_nothing_are_errors_with_the_counts(photos, config, tmp_path):
    model = KeywordEncoder()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCorpusError, match="read as image folder"):
        embed_corpus(model, tmp_path / "empty", tmp_path / "e.coll", config)
    assert not (tmp_path / "e.coll").exists()  # nothing was created
    with pytest.raises(NothingEmbeddedError, match=r"holds 6 images without a caption; --modality images"):
        embed_corpus(model, photos, tmp_path / "t.coll", config.replace(modality="texts"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.jpg", "b.png", "c.gif"):
        (broken / name).write_bytes(b"not an image at all")
    for attempt in range(2):  # a re-run is no success either
        with pytest.raises(NothingEmbeddedError) as info:
            embed_corpus(model, broken, tmp_path / "b.coll", config)
        message = str(info.value)
        assert "all 3 items were skipped" in message or attempt == 1
        assert "errors.jsonl" in message
    assert info.value.summary is not None


def test_skips_are_counted_in_words_with_examples(photos, config, tmp_path):
    model = KeywordEncoder()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "red.txt").write_text("a red photo\n\n", encoding="utf-8")
    (photos / "green.txt").write_text("   \n", encoding="utf-8")  # an empty caption
    summary = embed_corpus(model, photos, tmp_path / "c", config)
    assert summary.embedded == 7  # six photos and one caption
    assert summary.skipped == {"empty caption": 1, "decode_error": 1}
    text = str(summary)
    assert "skipped 2 (1 image could not be decoded, 1 empty caption)" in text
    assert f"skipped {photos / 'green.png'}: empty caption" in text and "broken.jpg" in text
    only_images = embed_corpus(model, photos, tmp_path / "d", config.replace(modality="images"))
    assert only_images.skipped == {"decode_error": 1}  # a caption problem does not concern images


def test_odd_real_images_embed(config, tmp_path):
    """Odd sizes and modes, a CMYK JPEG, a 16-bit PNG, a palette GIF with transparency."""
    folder = tmp_path / "odd"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1, 997, 3), dtype=np.uint8)).save(folder / "strip.png")
    Image.new("CMYK", (33, 17), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (19, 23), dtype=np.uint16)).save(folder / "deep.png")
    gif = Image.new("P", (9, 9), 1)
    gif.putpalette([255, 255, 255, 220, 30, 30] + [0] * 762)
    gif.save(folder / "anim.gif", transparency=0)
    Image.new("LA", (5, 41), (100, 128)).save(folder / "la.png")
    summary = embed_corpus(KeywordEncoder(), folder, tmp_path / "c", config)
    assert summary.embedded == 5 and summary.skipped == {}


def test_images_inside_a_parquet_file_are_served_from_its_rows(config, tmp_path):
    """A Parquet export with image bytes (Hugging Face ``{bytes, path}`` structs) is embedded, searched
    and served: the item's image comes from its row, typed by its bytes; its path is shown without
    the server's folders."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    blobs = [png_bytes(c, size=24) for c in COLOURS[:3]]
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 10, 10)).save(buffer, format="JPEG")
    blobs.append(buffer.getvalue())
    images = pa.array(
        [{"bytes": b, "path": f"{i}.img"} for i, b in enumerate(blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    captions = [f"a {c} square" for c in COLOURS[:3]] + ["a red photo"]
    pq.write_table(pa.table({"image": images, "text": captions}), data / "train.parquet")
    model = KeywordEncoder()
    coll = tmp_path / "rows.coll"
    assert embed_corpus(model, data / "train.parquet", coll, config).embedded == 8
    with _serve("rows", coll, data, model) as client:
        r = client.post("/collections/rows/search/text", json={"text": "something green", "k": 4})
        assert r.status_code == 200, r.text
        hits = [h for h in r.json()["hits"] if h["metadata"].get("modality") == "image"]
        assert hits and all(h["metadata"]["path"].startswith("parquet://train.parquet#image/") for h in hits)
        assert str(tmp_path) not in r.text  # no server folder in the answer
        served = {}
        for hit in hits:
            got = client.get(hit["image_url"])
            assert got.status_code == 200, got.text
            served[hit["metadata"]["path"]] = (got.headers["content-type"], got.content)
        row = {path.rsplit("/", 1)[1]: value for path, value in served.items()}
        for index, (kind, content) in row.items():
            assert content == blobs[int(index)]
            assert kind == ("image/jpeg" if index == "3" else "image/png")
    # a media root that does not hold the table file refuses it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with _serve("rows", coll, elsewhere, model) as client:
        hit = client.post("/collections/rows/search/text", json={"text": "red", "k": 1}).json()["hits"][0]
        assert client.get(hit["image_url"]).status_code == 403
