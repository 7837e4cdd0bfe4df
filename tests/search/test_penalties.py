"""Hub penalties computed once per item: equal to the per-query computation, exact as the collection
changes, stored beside the bank and refused when they no longer describe it."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import Collection
from retrieval.search import PenaltyTable, QueryBank, Searcher, precompute_penalties
from retrieval.search.hubness import Hubness, item_penalties, query_bank_path, rerank
from retrieval.search.penalties import penalty_table_path


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world(tmp_path):
    """A collection of 300 items (some lean towards a hub direction), a bank and text queries."""
    rng = np.random.default_rng(7)
    dim = 16
    hub = _unit(np.ones((1, dim)))
    items = _unit(rng.standard_normal((300, dim)) + rng.random((300, 1)) * 2 * hub)
    bank = _unit(rng.standard_normal((64, dim)) + hub)
    queries = _unit(rng.standard_normal((20, dim)) + hub)
    path = tmp_path / "c.coll"
    with Collection.create(path, dim=dim, index="Flat") as coll:
        coll.add(items, metadata=[{"n": i} for i in range(len(items))])
        coll.save()
    QueryBank({"text": bank, "image": _unit(rng.standard_normal((32, dim)))}).save(query_bank_path(path))
    return path, items, bank, queries


def _reference(coll, bank, queries, hub, k):
    """Per-query correction as it was done before: penalties of the candidates from their vectors."""
    scores, ids = coll.search(queries, hub.candidates)
    unique = np.unique(ids[ids >= 0])
    pen = item_penalties(bank, coll.vectors(unique), hub)
    return rerank(scores, ids, dict(zip(unique.tolist(), pen.tolist())), k)


@pytest.mark.parametrize("hub", [Hubness("isoftmax", candidates=50), Hubness("csls", k=5, candidates=50)])
def test_looked_up_penalties_give_the_per_query_ranking(world, hub):
    path, _, bank, queries = world
    with Searcher(None, path, hubness=hub) as searcher:
        hits = searcher.search_vectors(queries, k=10, query_modality="text")
        coll = searcher.collection
        ref_scores, ref_ids = _reference(coll, bank, queries, hub, 10)
    assert [[h.id for h in row] for row in hits] == ref_ids.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], ref_scores, atol=1e-5)


def test_prepare_fills_every_item_once_and_stores_the_table(world):
    path, items, bank, _ = world
    hub = Hubness("isoftmax")
    with Searcher(None, path, hubness=hub) as searcher:
        searcher.prepare()
        table = searcher.penalty_table("text")
        assert len(table) == len(items)
        got = table.lookup(np.arange(len(items)), searcher.collection)
    np.testing.assert_allclose(got, item_penalties(bank, items, hub), atol=1e-6)
    stored = penalty_table_path(path, "text", hub)
    assert stored.exists() and penalty_table_path(path, "image", hub).exists()
    # a second searcher reads it: nothing is computed again
    with Searcher(None, path, hubness=hub) as again:
        table = again.penalty_table("text")
        assert len(table) == len(items) and not table.dirty
        calls = []
        import retrieval.search.penalties as module

        original = module.item_penalties
        module.item_penalties = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            again.search_vectors(items[:5], k=5, query_modality="text")
        finally:
            module.item_penalties = original
        assert calls == []


def test_added_and_removed_items_stay_exact(world):
    path, items, bank, queries = world
    hub = Hubness("isoftmax", candidates=40)
    with Collection.open(path) as coll:
        tables = precompute_penalties(coll, QueryBank.load(query_bank_path(path)), hub)
        assert set(tables) == {"text", "image"}
        rng = np.random.default_rng(3)
        new_ids = coll.add(_unit(rng.standard_normal((25, items.shape[1])) + 3 * queries[:1]))
        coll.remove(np.arange(0, 40))
        coll.save()
    # the stored table is still valid; new ids are filled on demand, removed ids are never returned
    with Searcher(None, path, hubness=hub) as searcher:
        table = searcher.penalty_table("text")
        assert len(table) == len(items) and not table.dirty
        hits = searcher.search_vectors(queries, k=10, query_modality="text")
        ref_scores, ref_ids = _reference(searcher.collection, bank, queries, hub, 10)
        assert table.dirty  # the added items came up as candidates and were computed
        assert set(new_ids.tolist()) & {h.id for row in hits for h in row}
        assert not {h.id for row in hits for h in row} & set(range(40))
    assert [[h.id for h in row] for row in hits] == ref_ids.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], ref_scores, atol=1e-5)
    with Collection.open(path, read_only=True) as coll:
        table = PenaltyTable.open(coll, bank, hub, "text", path=penalty_table_path(path, "text", hub))
        table.update(coll)
        assert len(table) == len(coll)  # removed ids dropped, every live id present
        np.testing.assert_allclose(
            table.lookup(coll.ids(), coll), item_penalties(bank, coll.vectors(coll.ids()), hub), atol=1e-6
        )


def test_a_stale_table_is_recomputed_not_trusted(world, tmp_path):
    path, items, bank, queries = world
    hub = Hubness("isoftmax", candidates=30)
    with Searcher(None, path, hubness=hub) as searcher:
        searcher.prepare()
    stored = penalty_table_path(path, "text", hub)
    # another bank: the table is not used
    other = QueryBank({"text": _unit(bank[::-1] + 0.3)})
    with Searcher(None, path, hubness=hub, query_bank=other) as searcher:
        assert len(searcher.penalty_table("text")) == 0
    # the collection made again at the same place with other vectors (same ids): recomputed
    rng = np.random.default_rng(11)
    fresh = _unit(rng.standard_normal(items.shape))
    with Collection.create(path, dim=items.shape[1], index="Flat", overwrite=True) as coll:
        coll.add(fresh)
        coll.save()
    with Searcher(None, path, hubness=hub, query_bank=QueryBank({"text": bank})) as searcher:
        table = searcher.penalty_table("text")
        assert len(table) == 0
        hits = searcher.search_vectors(queries, k=5, query_modality="text")
        _, ref_ids = _reference(searcher.collection, bank, queries, hub, 5)
    assert [[h.id for h in row] for row in hits] == ref_ids.tolist()
    # a damaged file: recomputed, the search still answers
    stored.write_bytes(b"not a table")
    with Searcher(None, path, hubness=hub, query_bank=QueryBank({"text": bank})) as searcher:
        assert searcher.search_vectors(queries[:2], k=3, query_modality="text")


def test_a_table_answers_from_several_threads(world):
    from concurrent.futures import ThreadPoolExecutor

    path, _, bank, queries = world
    hub = Hubness("csls", k=4, candidates=60)
    with Searcher(None, path, hubness=hub) as searcher:
        with ThreadPoolExecutor(4) as pool:
            rows = list(
                pool.map(lambda q: searcher.search_vectors(q[None], k=8, query_modality="text")[0], queries)
            )
        _, ref_ids = _reference(searcher.collection, bank, queries, hub, 8)
    assert [[h.id for h in row] for row in rows] == ref_ids.tolist()
