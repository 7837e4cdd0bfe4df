"""The text index on Milvus: BM25 full-text search on Milvus Lite, hybrid search through a Searcher, the
same reciprocal rank fusion as Milvus's own hybrid_search, and clear refusals (old servers, Lite's
missing stemmer, fields searched apart, fields changed later)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexes import create_collection, open_collection

from support.milvus import unique_name

ITEMS = [
    ({"title": "Café crème", "tags": ["drink"], "g": 0}, 0),
    ({"title": "Red bicycle ZQ-7781", "tags": ["bike"], "g": 1}, 1),
    ({"title": "Blue bicycle", "tags": ["bike", "sale"], "g": 0}, 1),
    ({"title": "Iced coffee", "tags": ["drink", "cold"], "g": 1}, 2),
]


def _vectors(rows: list[int], dim: int = 4) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[rows]


@pytest.fixture()
def shop(lite_db: Path) -> str:
    location = f"milvus-lite://{lite_db}/{unique_name('text')}"
    with create_collection(location, dim=4, index="Flat", text_fields=["title", "tags"]) as coll:
        coll.add(_vectors([r for _, r in ITEMS]), [m for m, _ in ITEMS])
    return location


def test_bm25_on_milvus_lite(shop: str) -> None:
    with open_collection(shop) as coll:
        assert coll.text_fields == ["title", "tags"] and coll.info()["text_index"]["fields"] == [
            "title",
            "tags",
        ]
        _, ids = coll.search_text(["CAFE", "zq-7781", "bike", "", "nothing here"], 3)
        assert ids[0].tolist() == [0, -1, -1]  # diacritics and case folded on both sides
        assert ids[1, 0] == 1 and set(ids[2, :2].tolist()) == {1, 2}
        assert ids[3].tolist() == [-1, -1, -1] and ids[4].tolist() == [-1, -1, -1]
        _, ids = coll.search_text("bike", 3, where={"g": 1})
        assert ids[0].tolist() == [1, -1, -1]
        coll.remove([1])
        coll.save()
        _, ids = coll.search_text("bicycle", 3)
        assert ids[0].tolist() == [2, -1, -1]  # removed items never come back
        with pytest.raises(ValueError, match="searches its text fields"):
            coll.search_text("bike", 3, fields=["tags"])
        with pytest.raises(ValueError, match="not in the text index"):
            coll.search_text("bike", 3, fields=["sku"])
        with pytest.raises(ValueError, match="chosen when the collection is created"):
            coll.set_text_fields(["title"])
        coll.set_text_fields(["title", "tags"])  # the same: nothing to do


def test_milvus_lite_refuses_stemming(lite_db: Path) -> None:
    with pytest.raises(ValueError, match="no stemming analyzer"):
        create_collection(
            f"milvus-lite://{lite_db}/{unique_name('stem')}", dim=4, text_fields=["t"], stemming="porter"
        )


def test_hybrid_searcher_on_milvus_lite(shop: str) -> None:
    from retrieval.search import Hybrid, Searcher

    with Searcher(None, shop, hybrid=Hybrid(fusion="lexical")) as words:
        hits = words.search_hybrid(["zq-7781"], k=3)[0]
        assert [h.id for h in hits] == [1] and hits[0].lexical > 0
    with open_collection(shop, read_only=True) as coll:
        searcher = Searcher(None, coll, hybrid=Hybrid())
        hits = searcher.search_hybrid(["zq-7781"], _vectors([2]), k=2)[0]
        assert [h.id for h in hits] == [1, 3]  # 1: first by words, in the dense list too; 3: first by meaning


def test_our_rrf_is_milvus_hybrid_search_rrf(shop: str) -> None:
    """Our fusion of the two arms orders items as Milvus's hybrid_search with RRFRanker(60) does."""
    from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker

    from retrieval.search import fuse_rrf

    db, name = shop[len("milvus-lite://") :].rsplit("/", 1)
    q = _vectors([0])
    with open_collection(shop, read_only=True) as coll:
        _, dense = coll.search(q, 4)
        _, words = coll.search_text("bike drink", 4)
    ours = fuse_rrf([dense, words], 4, 60)[1][0].tolist()
    client = MilvusClient(db)
    try:
        requests = [
            AnnSearchRequest(data=[q[0].tolist()], anns_field="vector", param={"metric_type": "IP"}, limit=4),
            AnnSearchRequest(
                data=["bike drink"], anns_field="text_sparse", param={"metric_type": "BM25"}, limit=4
            ),
        ]
        result = client.hybrid_search(name, requests, ranker=RRFRanker(60), limit=4, output_fields=["id"])
        theirs = [int(h["id"]) for h in result[0]]
        scores = [float(h["distance"]) for h in result[0]]
    finally:
        client.close()
    mine = fuse_rrf([dense, words], 4, 60)[0][0]
    np.testing.assert_allclose(np.sort(mine[: len(scores)])[::-1], sorted(scores, reverse=True), rtol=1e-5)
    assert set(ours[: len(theirs)]) == set(theirs)
    assert [i for i in ours if i in theirs][:1] == theirs[:1]


@pytest.mark.slow
def test_an_old_milvus_server_is_refused_by_version(milvus_server) -> None:
    with pytest.raises(ValueError, match=r"is version .*text fields need BM25 full-text search.*2\.5"):
        create_collection(milvus_server.location(unique_name("old")), dim=4, text_fields=["title"])


def test_copy_keeps_the_text_index(shop: str, tmp_path: Path) -> None:
    from indexes import copy_collection

    copy_collection(shop, tmp_path / "local")
    with open_collection(tmp_path / "local", read_only=True) as coll:
        assert coll.text_fields == ["title", "tags"]
        assert coll.search_text("cafe", 2)[1][0, 0] == 0
