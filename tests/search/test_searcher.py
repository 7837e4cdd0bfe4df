"""Searcher: the four directions, batches, filters, composed queries, refine, raw vectors, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from indexes import Collection
from retrieval.search import Hit, Searcher

from support.images import write_image
from support.keywords import COLORS, KeywordEncoder


@pytest.fixture
def searcher(fake_model, collection):
    with Searcher(fake_model, collection) as s:
        yield s


def test_hit_is_frozen():
    hit = Hit(1, 0.5, {"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.score = 1.0  # type: ignore[misc]


def test_text_to_image_finds_the_colour(searcher):
    hits = searcher.text_to_image("a red thing", k=4)
    assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
    assert all(h.metadata["modality"] == "image" for h in hits)
    assert all("red" in h.metadata["caption"] for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_to_text_returns_captions(searcher):
    hits = searcher.text_to_text("blue dog", k=3)
    assert hits[0].metadata["caption"] == "a blue dog"
    assert all(h.metadata["modality"] == "text" for h in hits)


def test_image_to_text_and_image_to_image(searcher, corpus_rows, tmp_path):
    query = tmp_path / "q.png"
    write_image(query, "green", seed=999)
    texts = searcher.image_to_text(query, k=3)
    assert all(h.metadata["modality"] == "text" and "green" in h.metadata["caption"] for h in texts)
    images = searcher.image_to_image(Image.open(query), k=3)
    assert all(h.metadata["modality"] == "image" and "green" in h.metadata["caption"] for h in images)
    # An image of the collection finds itself first.
    own = searcher.image_to_image(corpus_rows[5]["image"], k=1)[0]
    assert own.metadata["path"] == corpus_rows[5]["image"] and own.score == pytest.approx(1.0, abs=1e-5)


def test_batches_equal_single_queries(searcher, corpus_rows):
    queries = ["a red car", "yellow bird", "cyan"]
    batch = searcher.text_to_image_batch(queries, k=5)
    assert len(batch) == 3
    for query, hits in zip(queries, batch):
        assert [h.id for h in hits] == [h.id for h in searcher.text_to_image(query, k=5)]
    images = [corpus_rows[0]["image"], corpus_rows[1]["image"]]
    assert [[h.id for h in hs] for hs in searcher.image_to_text_batch(images, k=2)] == [
        [h.id for h in searcher.image_to_text(im, k=2)] for im in images
    ]
    assert searcher.text_to_image_batch([], k=3) == []


def test_where_filter_is_merged_with_the_modality(searcher):
    hits = searcher.text_to_image("a red thing", k=10, where={"split": "test"})
    assert hits and all(h.metadata["split"] == "test" and h.metadata["modality"] == "image" for h in hits)
    same = searcher.text_to_image("a red thing", k=10, where={"split": "test", "modality": "image"})
    assert [h.id for h in same] == [h.id for h in hits]
    with pytest.raises(ValueError, match="modality"):
        searcher.text_to_image("red", where={"modality": "text"})
    with pytest.raises(TypeError, match="where"):
        searcher.text_to_image("red", where="split=test")  # type: ignore[arg-type]


def test_k_larger_than_matches_gives_fewer_hits_without_padding(searcher, corpus_rows):
    hits = searcher.text_to_image("red", k=100, where={"path": corpus_rows[0]["image"]})
    assert len(hits) == 1 and hits[0].id >= 0


def test_composed_query_moves_towards_the_text(searcher, tmp_path):
    query = tmp_path / "q.png"
    write_image(query, "red", seed=123)
    plain = searcher.image_to_image(query, k=1)[0]
    assert "red" in plain.metadata["caption"]
    composed = searcher.composed(query, "blue", k=1, text_weight=0.7)
    assert "blue" in composed[0].metadata["caption"]
    assert [h.id for h in searcher.composed(query, "blue", k=3, text_weight=0.0)] == [
        h.id for h in searcher.image_to_image(query, k=3)
    ]
    with pytest.raises(ValueError, match="text_weight"):
        searcher.composed(query, "blue", text_weight=1.5)


def test_refine_and_raw_vectors(searcher, fake_model):
    vector = fake_model.encode_texts(["purple"])[0].numpy()
    plain = searcher.search_vector(vector, k=5, modality="image")
    refined = searcher.search_vector(vector * 3.0, k=5, modality="image", refine=4)  # normalised here
    assert [h.id for h in plain] == [h.id for h in refined]
    assert [h.id for h in plain] == [h.id for h in searcher.text_to_image("purple", k=5)]
    rows = searcher.search_vectors(np.stack([vector, vector]), k=2)
    assert len(rows) == 2 and [h.id for h in rows[0]] == [h.id for h in rows[1]]


def test_wrong_queries_are_clear_errors(searcher, fake_model, tmp_path):
    with pytest.raises(ValueError, match=r"shape \[17\]"):
        searcher.search_vector(np.ones(5))
    with pytest.raises(ValueError, match=r"\[n, 17\]"):
        searcher.search_vectors(np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        searcher.search_vector(np.full(17, np.nan))
    with pytest.raises(ValueError, match="zeros"):
        searcher.search_vector(np.zeros(17))
    with pytest.raises(TypeError, match="str"):
        searcher.text_to_image(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence"):
        searcher.text_to_image_batch("a red car")
    with pytest.raises(ValueError, match="empty"):
        searcher.text_to_image("  ")
    with pytest.raises(FileNotFoundError, match="not a file"):
        searcher.image_to_text(str(tmp_path / "missing.png"))
    with pytest.raises(TypeError, match="PIL image or a path"):
        searcher.image_to_image(42)
    with pytest.raises(ValueError, match="k must"):
        searcher.text_to_image("red", k=0)
    with pytest.raises(ValueError, match="refine"):
        searcher.text_to_image("red", refine=0)


def test_model_of_another_fingerprint_is_refused(collection):
    other = KeywordEncoder(salt="-retrained")
    with pytest.raises(ValueError, match="keyword-onehot-17-retrained") as info:
        Searcher(other, collection)
    assert "keyword-onehot-17 " in str(info.value) or "keyword-onehot-17," in str(info.value)


def test_searcher_without_model_searches_raw_vectors(collection):
    with Collection.open(collection, read_only=True) as coll:
        searcher = Searcher(None, coll)
        hits = searcher.search_vector(
            np.eye(17, dtype=np.float32)[list(COLORS).index("white")], k=2, modality="image"
        )
        assert all("white" in h.metadata["caption"] for h in hits)
        with pytest.raises(ValueError, match="no model"):
            searcher.text_to_image("white")
