"""Hybrid search: the fusion maths against hand-computed examples, and the Searcher answering text queries
by both arms (filters on both, a product code dense search misses, the lexical arm alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexes import Collection
from retrieval.search import Hybrid, Searcher, fuse_rrf, fuse_weighted

from support.keywords import KeywordEncoder, keyword_vector

# ---------------------------------------------------------------------------------------------- maths


def test_rrf_against_a_hand_computed_example() -> None:
    dense = np.array([[10, 20, 30, 40], [5, -1, -1, -1]])
    lexical = np.array([[30, 50, 10, -1], [-1, -1, -1, -1]])
    scores, ids = fuse_rrf([dense, lexical], k=5, rank_constant=60)
    # row 0: 10 = 1/61 + 1/63, 30 = 1/63 + 1/61, 20 = 1/62, 50 = 1/62, 40 = 1/64
    # ties: the better rank in either arm first (10 and 30 were both first somewhere; 20 and 50 second),
    # then the smaller id
    assert ids[0].tolist() == [10, 30, 20, 50, 40]
    np.testing.assert_allclose(
        scores[0], [1 / 61 + 1 / 63, 1 / 61 + 1 / 63, 1 / 62, 1 / 62, 1 / 64], rtol=1e-6
    )
    assert ids[1].tolist() == [5, -1, -1, -1, -1] and np.isneginf(scores[1, 1:]).all()
    np.testing.assert_allclose(scores[1, 0], 1 / 61, rtol=1e-6)
    # k = 0: the first ranks dominate; one arm alone keeps its order
    s, i = fuse_rrf([np.array([[3, 1, 2]])], k=3, rank_constant=0)
    assert i.tolist() == [[3, 1, 2]] and s[0].tolist() == pytest.approx([1.0, 0.5, 1 / 3])


def test_weighted_against_a_hand_computed_example() -> None:
    dense = (np.array([[0.9, 0.7, 0.5, -np.inf]]), np.array([[1, 2, 3, -1]]))
    lexical = (np.array([[12.0, 6.0, 2.0]]), np.array([[3, 4, 2]]))
    # dense normalised: 1 -> 1, 2 -> 0.5, 3 -> 0; lexical: 3 -> 1, 4 -> 0.4, 2 -> 0
    for alpha, want in [
        (0.5, {1: 0.5, 2: 0.25, 3: 0.5, 4: 0.2}),
        (1.0, {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.0}),
        (0.0, {1: 0.0, 2: 0.0, 3: 1.0, 4: 0.4}),
        (0.25, {1: 0.25, 2: 0.125, 3: 0.75, 4: 0.3}),
    ]:
        scores, ids = fuse_weighted(dense, lexical, k=4, alpha=alpha)
        got = {int(i): float(s) for i, s in zip(ids[0], scores[0])}
        assert got == pytest.approx(want), alpha
        assert (np.diff(scores[0]) <= 0).all()
    # a list of equal scores normalises to 1; an empty arm adds nothing
    scores, ids = fuse_weighted(
        (np.array([[0.3, 0.3]]), np.array([[7, 8]])),
        (np.array([[-np.inf]]), np.array([[-1]])),
        k=3,
        alpha=0.5,
    )
    assert ids.tolist() == [[7, 8, -1]] and scores[0, :2].tolist() == [0.5, 0.5]


def test_hybrid_settings_are_checked() -> None:
    assert Hybrid(fields="title, tags").fields == ("title", "tags")
    assert Hybrid.from_dict(Hybrid(fusion="weighted", alpha=0.3).as_dict()) == Hybrid(
        fusion="weighted", alpha=0.3
    )
    for bad, match in [
        ({"fusion": "max"}, "fusion must be one of"),
        ({"alpha": 1.5}, "alpha must be"),
        ({"k": -1}, "rank constant"),
        ({"candidates": 0}, "candidates"),
        ({"fields": ()}, "must name text fields"),
    ]:
        with pytest.raises(ValueError, match=match):
            Hybrid(**bad)
    with pytest.raises(ValueError, match="unknown hybrid setting"):
        Hybrid.from_dict({"fusion": "rrf", "weight": 1})
    assert [Hybrid(fusion=f).scoring for f in ("rrf", "weighted", "lexical")] == ["rrf", "weighted", "bm25"]


# ---------------------------------------------------------------------------------------------- searcher
IMAGES = [
    ("a red dog", "Red dog plush", ["toy", "dog"]),
    ("a red car", "Red sports car", ["car"]),
    ("a blue car", "Blue family car", ["car", "family"]),
    ("a green tree", "Oak tree", ["garden"]),
    ("a red house", "Little red house", ["home"]),
    ("a red boat", "Red boat ZQ-7781 limited edition", ["boat", "sale"]),  # the made-up product code
    ("a yellow bird", "Yellow canary", ["bird", "pet"]),
    ("a red bird", "Cardinal", ["bird", "café"]),
]


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    """Image items (vectors of their keyword captions) with titles and tags, and their caption items."""
    vectors, metas = [], []
    for i, (caption, title, tags) in enumerate(IMAGES):
        vectors.append(keyword_vector(caption))
        metas.append({"modality": "image", "title": title, "tags": tags, "n": i})
    for i, (caption, title, _) in enumerate(IMAGES):
        vectors.append(keyword_vector(caption))
        metas.append({"modality": "text", "title": f"{caption} ({title})", "n": i})
    path = tmp_path / "shop"
    with Collection.create(path, dim=len(vectors[0]), index="Flat", fingerprint=KeywordEncoder().fingerprint(),
                           text_fields=["title", "tags"]) as coll:  # fmt: skip
        coll.add(np.stack(vectors), metas)
    return path


def test_a_product_code_dense_search_misses_and_hybrid_finds(shop: Path) -> None:
    model = KeywordEncoder()
    with Searcher(model, shop) as dense:
        ranked = [h.metadata["n"] for h in dense.text_to_image("ZQ-7781", k=3)]
        assert 5 not in ranked  # no word the model knows: every image looks alike to it
    with Searcher(model, shop, hybrid=Hybrid()) as hybrid:
        hits = hybrid.text_to_image("ZQ-7781", k=3)
        assert hits[0].metadata["n"] == 5 and hits[0].metadata["modality"] == "image"
        assert hits[0].lexical is not None and hits[0].lexical > 0
        assert hits[0].cosine == pytest.approx(
            float(keyword_vector("ZQ-7781") @ keyword_vector("a red boat"))
        )
        assert hits[0].score == pytest.approx(1 / 61 + 1 / (60 + 1 + ranked_position(dense_order(shop), 5)))
        assert hybrid.scoring("text") == "rrf" and hybrid.scoring("image") == "cosine"
        # words the model knows still count: "red" favours red items in both arms
        red = hybrid.text_to_image("red boat", k=2)
        assert red[0].metadata["n"] == 5


def dense_order(shop: Path) -> list[int]:
    with Searcher(KeywordEncoder(), shop) as s:
        return [h.metadata["n"] for h in s.text_to_image("ZQ-7781", k=8)]


def ranked_position(order: list[int], n: int) -> int:
    return order.index(n)


def test_filters_apply_to_both_arms(shop: Path) -> None:
    with Searcher(KeywordEncoder(), shop, hybrid=Hybrid()) as searcher:
        hits = searcher.text_to_image("ZQ-7781 red", k=8, where={"n": {"lt": 5}})
        assert hits and all(h.metadata["n"] < 5 and h.metadata["modality"] == "image" for h in hits)
        assert all(h.lexical is None or "7781" not in h.metadata["title"] for h in hits)
        captions = searcher.text_to_text("ZQ-7781", k=3)  # text->text: the captions' own text fields
        assert captions[0].metadata["modality"] == "text" and captions[0].metadata["n"] == 5
        assert all(h.metadata["modality"] == "text" for h in captions)


def test_weighted_fusion_and_the_lexical_arm_alone(shop: Path) -> None:
    with Searcher(
        KeywordEncoder(), shop, hybrid=Hybrid(fusion="weighted", alpha=0.0)
    ) as lexical_only_by_weight:
        hits = lexical_only_by_weight.text_to_image("car family", k=3)
        assert hits[0].metadata["n"] == 2  # "family" only in the blue car's text
        assert lexical_only_by_weight.scoring("text") == "weighted"
    with Searcher(None, shop, hybrid=Hybrid(fusion="lexical", fields=("tags",))) as words:  # no model needed
        hits = words.text_to_image("CAFE", k=5)
        assert [h.metadata["n"] for h in hits] == [7] and hits[0].score == hits[0].lexical
        assert hits[0].cosine is None
        assert words.search_hybrid(["cafe bird"], k=5, modality="image")[0][0].metadata["n"] == 7
        with pytest.raises(ValueError, match="no model"):
            words.search_hybrid(["cafe"], k=2, hybrid=Hybrid())


def test_collections_without_the_fields_are_refused(tmp_path: Path, shop: Path) -> None:
    with pytest.raises(ValueError, match=r"indexes the text of \['title', 'tags'\], not \['sku'\]"):
        Searcher(KeywordEncoder(), shop, hybrid=Hybrid(fields=("sku",)))
    plain = tmp_path / "plain"
    with Collection.create(plain, dim=len(keyword_vector("x")), index="Flat") as coll:
        coll.add(keyword_vector("a red dog")[None, :], [{"title": "dog"}])
    with pytest.raises(ValueError, match="has no text index"):
        Searcher(KeywordEncoder(), plain, hybrid=Hybrid())
    with (
        Searcher(KeywordEncoder(), plain) as searcher,
        pytest.raises(ValueError, match="needs hybrid settings"),
    ):
        searcher.search_hybrid(["dog"])
