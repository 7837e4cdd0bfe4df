"""Hubness correction: penalties against a slow reference, a planted hub, re-ranking keeps the ids."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import Collection
from retrieval.search import Searcher
from retrieval.search.hubness import Hubness, QueryBank, item_penalties, query_bank_path, rerank


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _planted(seed: int = 0, n: int = 16, pull: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items = basis vectors + one hub (the all-ones direction); queries lean towards the hub."""
    rng = np.random.default_rng(seed)
    eye = np.eye(n, dtype=np.float32)
    hub = _unit(np.ones((1, n), dtype=np.float32))
    items = np.concatenate([eye, hub])  # [n + 1, n]; the hub is the last item

    def queries() -> np.ndarray:
        return _unit(eye + pull * hub + 0.05 * rng.standard_normal((n, n)).astype(np.float32))

    return items, queries(), queries()  # items, test queries (query j wants item j), bank


def _top1(scores: np.ndarray) -> np.ndarray:
    return scores.argmax(1)


@pytest.mark.parametrize("method", ["isoftmax", "csls"])
def test_a_planted_hub_stops_winning(method):
    items, queries, bank = _planted()
    n = len(queries)
    raw = queries @ items.T  # [n, n + 1]
    assert (_top1(raw) == n).mean() > 0.9  # the hub wins nearly every query
    penalty = item_penalties(bank, items, Hubness(method))  # [n + 1]
    corrected = raw - penalty[None, :]
    assert (_top1(corrected) == np.arange(n)).all()  # each query finds its own item
    assert penalty[n] > penalty[:n].max()  # the hub carries the largest penalty


def _reference_penalties(bank: np.ndarray, items: np.ndarray, hub: Hubness) -> np.ndarray:
    out = []
    for item in items.astype(np.float64):
        sims = [float(b @ item) for b in bank.astype(np.float64)]
        if hub.method == "isoftmax":
            out.append(np.log(sum(np.exp(hub.beta * s) for s in sims)) / hub.beta)
        else:
            out.append(sum(sorted(sims, reverse=True)[: hub.k]) / min(hub.k, len(sims)) / 2)
    return np.array(out)


@pytest.mark.parametrize("hub", [Hubness("isoftmax", beta=7.0), Hubness("csls", k=3), Hubness("csls", k=50)])
def test_penalties_match_a_slow_reference(hub):
    rng = np.random.default_rng(1)
    bank, items = _unit(rng.standard_normal((20, 6))), _unit(rng.standard_normal((9, 6)))
    got = item_penalties(bank, items, hub, chunk_size=4)
    np.testing.assert_allclose(got, _reference_penalties(bank, items, hub), rtol=1e-5, atol=1e-5)


def test_rerank_changes_only_the_order():
    rng = np.random.default_rng(2)
    ids = np.array([[5, 3, 9, -1], [1, 2, 3, 4]], dtype=np.int64)
    scores = np.sort(rng.random((2, 4)).astype(np.float32), axis=1)[:, ::-1].copy()
    penalty = {i: float(rng.random()) for i in range(10)}
    new_scores, new_ids = rerank(scores, ids, penalty, k=4)
    for before, after in zip(ids, new_ids):
        assert sorted(before.tolist()) == sorted(after.tolist())  # same ids, padding kept last
    assert new_ids[0, -1] == -1
    for row in range(2):
        valid = new_ids[row] >= 0
        assert np.all(np.diff(new_scores[row][valid]) <= 0)  # best first
        expected = [scores[row][list(ids[row]).index(i)] - penalty[i] for i in new_ids[row][valid]]
        np.testing.assert_allclose(new_scores[row][valid], expected, rtol=1e-6)
    top2 = rerank(scores, ids, penalty, k=2)[1]
    np.testing.assert_array_equal(top2, new_ids[:, :2])


def test_query_bank_round_trip(tmp_path):
    bank = QueryBank({"text": _unit(np.ones((3, 4))), "image": _unit(np.eye(4))}, fingerprint="abc")
    path = tmp_path / "c.querybank.npz"
    bank.save(path)
    loaded = QueryBank.load(path)
    assert loaded.fingerprint == "abc" and sorted(loaded.vectors) == ["image", "text"]
    np.testing.assert_array_equal(loaded.for_queries("image"), bank.vectors["image"])
    with pytest.raises(ValueError, match="no text queries"):
        QueryBank({"image": np.eye(4)}).for_queries("text")
    with pytest.raises(FileNotFoundError, match="no query bank"):
        QueryBank.load(tmp_path / "missing.npz")


@pytest.fixture
def hub_collection(tmp_path):
    items, queries, bank = _planted(seed=3)
    path = tmp_path / "planted.coll"
    with Collection.create(path, dim=items.shape[1], index="Flat") as coll:
        coll.add(items, metadata=[{"name": f"item{i}"} for i in range(len(items))])
        coll.save()
    QueryBank({"text": bank}).save(query_bank_path(path))
    return path, items, queries


def test_searcher_corrects_raw_text_queries(hub_collection):
    path, _, queries = hub_collection
    n = len(queries)
    with Searcher(None, path) as plain:
        raw = plain.search_vectors(queries, k=3, query_modality="text")
    assert sum(hits[0].metadata["name"] == f"item{n}" for hits in raw) > n // 2
    with Searcher(None, path, hubness=Hubness("isoftmax", candidates=n + 1)) as corrected:
        fixed = corrected.search_vectors(queries, k=3, query_modality="text")
        same = corrected.search_vectors(queries, k=3)  # no query modality: no correction
    assert [hits[0].metadata["name"] for hits in fixed] == [f"item{j}" for j in range(n)]
    assert [[h.id for h in hits] for hits in same] == [[h.id for h in hits] for hits in raw]
    for hits in fixed:
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_corrected_hits_carry_their_cosine(hub_collection):
    """Each corrected hit keeps the plain cosine of query and item beside its score; the searcher
    names the scoring; without correction both are the cosine."""
    path, items, queries = hub_collection
    with Searcher(None, path, hubness=Hubness("csls", candidates=len(items))) as searcher:
        fixed = searcher.search_vectors(queries, k=4, query_modality="text")
        plain = searcher.search_vectors(queries, k=4)
        assert searcher.scoring("text") == "csls" and searcher.scoring(None) == "cosine"
    for row, hits in enumerate(fixed):
        for hit in hits:
            exact = float(queries[row] @ items[hit.id])
            assert hit.cosine == pytest.approx(exact, abs=1e-5)
            assert hit.score < hit.cosine  # the penalty is positive here
    assert all(h.score == h.cosine for hits in plain for h in hits)


def test_search_collection_applies_the_served_correction(hub_collection, monkeypatch):
    """``search_collection`` (what `retrieval search --hubness` calls) scores as the Searcher does."""
    import retrieval.model
    from retrieval.search import search_collection

    path, items, queries = hub_collection

    class VectorModel:  # a model whose text "i" encodes as query i
        embed_dim = items.shape[1]

        def fingerprint(self):
            return None

        def encode_texts(self, texts, **kwargs):
            return np.stack([queries[int(t)] for t in texts])

        def encode_images(self, images, **kwargs):
            raise AssertionError("no images here")

    monkeypatch.setattr(retrieval.model, "load_model", lambda name, **kw: VectorModel())
    with Searcher(None, path, hubness=Hubness("isoftmax")) as searcher:
        expected = searcher.search_vectors(queries[2:3], k=3, query_modality="text")[0]
    got = search_collection(path, "2", model_dir="any", k=3, hubness="isoftmax")
    assert [(h.id, h.score, h.cosine) for h in got] == [(h.id, h.score, h.cosine) for h in expected]
    bank = query_bank_path(path)
    assert search_collection(path, "2", model_dir="any", k=3, hubness="isoftmax", query_bank=bank) == got
    plain = search_collection(path, "2", model_dir="any", k=3)
    assert [h.score for h in plain] != [h.score for h in got]


def test_searcher_with_hubness_needs_a_bank_of_that_model(tmp_path, hub_collection):
    path, items, _ = hub_collection
    bare = tmp_path / "bare.coll"
    with Collection.create(bare, dim=items.shape[1], index="Flat") as coll:
        coll.add(items)
        coll.save()
    with pytest.raises(FileNotFoundError, match="no query bank"):
        Searcher(None, bare, hubness=Hubness())
    with Searcher(None, path, hubness=Hubness()) as searcher, pytest.raises(ValueError, match="no image"):
        searcher.search_vectors(items[:1], k=2, query_modality="image")


def test_hubness_settings_are_checked():
    with pytest.raises(ValueError, match="unknown hubness method"):
        Hubness("qbnorm")
    with pytest.raises(ValueError, match="beta"):
        Hubness(beta=0)


@pytest.fixture
def reranking_model(fake_model):
    import copy

    import torch

    from retrieval.match import MatchHead

    model = copy.copy(fake_model)
    torch.manual_seed(0)
    head = MatchHead(int(fake_model.embed_dim), hidden=8)
    torch.nn.init.normal_(head.mlp[2].weight, std=3.0)  # a head that disagrees with the cosine
    head.scale.data.fill_(0.0)
    model.match_head = head
    return model


@pytest.mark.parametrize("hubness", [None, Hubness("csls", k=3)])
def test_reranking_changes_only_the_order(reranking_model, fake_model, collection, hubness):
    queries = ["a red car", "yellow bird", "a blue dog"]
    if hubness is not None:
        from retrieval.search import QueryBank, query_bank_path

        bank = fake_model.encode_texts(["red", "green", "blue", "a car", "a dog"])
        QueryBank({"text": np.asarray(bank)}).save(query_bank_path(collection))
    with Searcher(fake_model, collection, hubness=hubness) as plain:
        dense = plain.text_to_image_batch(queries, k=6)
    with Searcher(reranking_model, collection, hubness=hubness, rerank=6) as searcher:
        reranked = searcher.text_to_image_batch(queries, k=6)
        top2 = searcher.text_to_image_batch(queries, k=2)
        vectors = searcher.encode_texts(queries)
        for before, after, short, query in zip(dense, reranked, top2, vectors):
            assert sorted(h.id for h in before) == sorted(h.id for h in after)  # same ids, none dropped
            assert [h.id for h in short] == [h.id for h in after[:2]]
            probs = reranking_model.match_head.probabilities(
                collection_vectors(searcher, [h.id for h in after]), np.repeat(query[None], len(after), 0)
            )
            np.testing.assert_allclose([h.score for h in after], probs, rtol=1e-5)
            assert np.all(np.diff(probs) <= 1e-7)
    assert any([h.id for h in a] != [h.id for h in b] for a, b in zip(dense, reranked))
    with pytest.raises(ValueError, match="match head"):
        Searcher(fake_model, collection, rerank=5)


def collection_vectors(searcher, ids):
    return searcher.collection.vectors(np.asarray(ids, dtype=np.int64))
