"""What is particular to Milvus collections (run on Milvus Lite): state, writers, index kinds, tuning, faults."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall
from milvus_support import unique_name

from indexes import CollectionBusyError, Limits, auto, create_collection, open_collection
from indexes.milvus import MilvusCollection, MilvusUnavailableError, kinds

D = 16


@pytest.fixture
def loc(lite_db: Path) -> str:
    return f"milvus-lite://{lite_db}/{unique_name('m')}"


def test_import_indexes_loads_neither_torch_nor_pymilvus() -> None:
    code = (
        "import sys, indexes\n"
        "from indexes import Collection, open_collection, create_collection, copy_collection, parse_location\n"
        "import indexes.milvus, indexes.milvus.expr, indexes.milvus.kinds\n"
        "parse_location('milvus://localhost:19530/photos')\n"
        "assert 'torch' not in sys.modules, 'torch loaded'\n"
        "assert 'pymilvus' not in sys.modules, 'pymilvus loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_state_lives_with_the_collection(loc: str) -> None:
    with create_collection(
        loc, D, metric="l2", fingerprint="fp1", recall_target=0.9, memory_budget="1GB"
    ) as coll:
        coll.add(clustered(5, D), [{"a": 1}] * 5)
    with MilvusCollection.open(loc, read_only=True) as coll:
        info = coll.info()
        assert (coll.dim, coll.metric, coll.fingerprint) == (D, "l2", "fp1")
        assert info["recall_target"] == 0.9 and info["memory_budget"] == 1 << 30
        assert info["next_id"] == 5 and info["version"] >= 1 and info["backend"] == "milvus-lite"
        assert info["index_spec"] == "Flat" and info["index_requested"] == "auto"


def test_l2_scores_are_negated_squared_distances(loc: str) -> None:
    x = clustered(50, D, seed=1)
    with create_collection(loc, D, metric="l2", index="Flat") as coll:
        coll.add(x)
        scores, ids = coll.search(x[:3] * 0.5, 4)
    want_s, want_i = exact_topk(x[:3] * 0.5, x, 4, metric="l2")
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-5)


def test_create_and_open_errors(loc: str, lite_db: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_collection(loc)
    create_collection(loc, D).close()
    with pytest.raises(FileExistsError, match="already exists: open it, or pass overwrite=True"):
        create_collection(loc, D)
    with create_collection(loc, 8, overwrite=True) as coll:
        assert coll.dim == 8
    with pytest.raises(ValueError, match="not supported; expected one of"):
        create_collection(loc + "x", D, metric="cosine")
    with pytest.raises(ValueError, match="not available in Milvus Lite"):
        create_collection(loc + "y", D, index="IVF16,PQ4")
    with pytest.raises(ValueError, match="no Milvus counterpart"):
        create_collection(loc + "z", D, index="OPQ4,IVF16,PQ4")
    with pytest.raises(ValueError, match="is a local folder"):
        MilvusCollection.open("some/folder")
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        open_collection(f"milvus-lite://{lite_db.parent}/nowhere/x.db/c")


def test_foreign_collections_are_left_alone(lite_db: Path) -> None:
    from pymilvus import MilvusClient

    name = unique_name("foreign")
    client = MilvusClient(str(lite_db))
    client.create_collection(name, dimension=D)
    client.close()
    loc = f"milvus-lite://{lite_db}/{name}"
    with pytest.raises(ValueError, match="not one made by siamese-retrieval"):
        open_collection(loc)
    with pytest.raises(ValueError, match="not one made by siamese-retrieval"):
        create_collection(loc, D, overwrite=True)


def test_one_writer_at_a_time(loc: str) -> None:
    x = clustered(4, D)
    create_collection(loc, D).close()
    first = open_collection(loc)
    second = open_collection(loc)  # takes over the writer token
    with pytest.raises(CollectionBusyError, match="opened for writing by another handle"):
        first.add(x[:1])
    assert second.add(x[:2]).tolist() == [0, 1]
    first.close()
    second.close()
    with open_collection(loc) as coll:
        assert coll.add(x[2:]).tolist() == [2, 3]


def test_add_with_given_ids(loc: str) -> None:
    x = clustered(6, D)
    with create_collection(loc, D) as coll:
        coll.add(x[:3], [{"k": i} for i in range(3)], ids=[10, 3, 7])
        np.testing.assert_array_equal(coll.ids(), [3, 7, 10])
        assert coll.get([10]) == [{"k": 0}]
        with pytest.raises(ValueError, match="already in collection"):
            coll.add(x[3:4], ids=[7])
        with pytest.raises(ValueError, match="duplicates"):
            coll.add(x[3:5], ids=[20, 20])
        with pytest.raises(ValueError, match="one id per vector"):
            coll.add(x[3:5], ids=[20])
        assert coll.add(x[3:4]).tolist() == [11], "next ids follow the largest given one"
        coll.reserve_ids(100)
        assert coll.add(x[4:5]).tolist() == [100]


def test_auto_index_follows_the_count(loc: str) -> None:
    x = clustered(300, D, seed=2)
    with create_collection(loc, D, index="auto", limits=Limits(flat_max=100)) as coll:  # HNSW beyond 100
        coll.add(x[:50])
        coll.save()
        assert coll.index_spec == "Flat" and not coll.needs_rebuild
        coll.add(x[50:])
        assert coll.needs_rebuild
        coll.save()
        assert coll.index_spec == "HNSW32" and not coll.needs_rebuild
        assert coll.info()["milvus_index"] == {
            "index_type": "HNSW",
            "build": {"M": 32, "efConstruction": kinds.HNSW_EF_CONSTRUCTION},
        }
        _, ids = coll.search(x[:5], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))


def test_tuning_reaches_the_recall_target(loc: str) -> None:
    x, q = clustered(3_000, D, seed=4), clustered(50, D, seed=5)
    with create_collection(loc, D, index="HNSW8", recall_target=0.9) as coll:
        coll.add(x)
        coll.save()  # tunes: the count passed TUNE_MIN
        params = coll.params
        assert {"efSearch", "tuned_recall", "tuned_on"} <= set(params) and params["tuned_on"] == 3_000
        _, ids = coll.search(q, 10)
    with open_collection(loc, read_only=True) as coll:
        assert coll.params["efSearch"] == params["efSearch"]
    _, truth = exact_topk(q, x, 10)
    assert recall(ids, truth) >= 0.85


def test_rebuild_and_refine(loc: str) -> None:
    x, q = clustered(800, D, seed=6), clustered(20, D, seed=7)
    with create_collection(loc, D, index="Flat") as coll:
        coll.add(x)
        coll.rebuild("IVF8,SQ8")
        assert coll.index_spec == "IVF8,SQ8" and coll.info()["index_requested"] == "IVF8,SQ8"
        scores, ids = coll.search(q, 5, refine=8)
    _, want_i = exact_topk(q, x, 5)
    assert recall(ids, want_i) >= 0.95
    # refined scores are exact inner products of the ids returned
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5, atol=1e-5)


def test_unreachable_server_fails_fast_naming_the_location() -> None:
    pytest.importorskip("pymilvus", reason="the distributed extra (pymilvus) is not installed")
    loc = "milvus://user:s3cret-pass@127.0.0.1:1/photos?timeout=2&token=tok-s3cret"
    t0 = time.perf_counter()
    with pytest.raises(MilvusUnavailableError) as err:
        open_collection(loc)
    assert time.perf_counter() - t0 < 60, "bounded by the timeout (generous margin for a loaded machine)"
    message = str(err.value)
    assert "milvus://127.0.0.1:1/photos" in message and "within 2 s" in message
    assert "s3cret" not in message and "tok-" not in message
    assert isinstance(err.value, ConnectionError)


def test_auto_choices_always_translate() -> None:
    for n in (0, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000):
        for budget in (None, 1 << 34, 1 << 30):
            for lite in (False, True):
                try:
                    spec = auto.choose_index(n, 256, budget)
                except ValueError:
                    continue  # the budget is too small for any index: the same error locally
                chosen = kinds.choose(n, 256, budget, lite)
                assert chosen.spec.split(",")[0] == spec.split(",")[0]
                assert not lite or chosen.index_type in kinds.LITE_TYPES


def test_index_translation() -> None:
    assert kinds.translate("IVF1024,PQ32", 256, lite=False).build == {"nlist": 1024, "m": 32, "nbits": 8}
    assert kinds.translate("HNSW32", 256, lite=True).index_type == "HNSW"
    hnsw = kinds.translate("HNSW16", 8, lite=False)
    assert kinds.search_params(hnsw, {"efSearch": 16}, k=100) == {"ef": 100}
    ivf = kinds.translate("IVF64,Flat", 8, lite=False)
    assert kinds.search_params(ivf, {"nprobe": 128}, k=10) == {"nprobe": 64}
    with pytest.raises(ValueError, match="multiple of 32"):
        kinds.translate("IVF16,PQ32", 100, lite=False)


def test_missing_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the distributed extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'siamese-retrieval\[distributed\]'"):
        open_collection("milvus://127.0.0.1:1/photos")


def test_stored_tuning_queries_are_what_tune_measures(loc: str) -> None:
    x = clustered(1_500, D, seed=8)
    shifted = clustered(60, D, seed=9) + 0.3  # queries apart from the stored vectors
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    with create_collection(loc, D, index="HNSW8", recall_target=0.9) as coll:
        coll.add(x, [{"modality": "image"}] * len(x))
        with pytest.raises(ValueError, match="unknown filter field"):
            coll.set_tuning_queries({"text->image": (shifted, {"nope": 1})})
        coll.set_tuning_queries({"text->image": (shifted, {"modality": "image"})})
        coll.save()  # tunes with the stored queries
        assert coll.params["tune_query_sets"] == ["text->image"] and coll.params["tune_queries"] == 60
    with open_collection(loc) as coll:
        assert coll.info()["tuning_queries"] == ["text->image"]
        coll.set_tuning_queries(None)
        assert coll.tune()["tune_query_sets"] == ["stored vectors"]


def test_a_state_older_than_the_rows_never_hands_an_id_out_twice(loc: str) -> None:
    """A server that stops abruptly may come back with the state from before its last change."""
    with create_collection(loc, D, index="Flat") as coll:
        coll.add(clustered(5, D))
        coll._table.put_state(coll._state.updated_with(next_id=2))  # what the restarted server remembered
    with open_collection(loc) as coll:
        assert coll.info()["next_id"] == 5
        np.testing.assert_array_equal(coll.add(clustered(2, D, seed=1)), [5, 6])


def test_ids_near_the_int64_limit(loc: str) -> None:
    top = 2**63 - 2
    with create_collection(loc, D, index="Flat") as coll:
        with pytest.raises(ValueError, match=rf"ids must be at most {top}"):
            coll.add(clustered(1, D), ids=[2**63 - 1])
        coll.add(clustered(1, D), ids=[top])
        with pytest.raises(ValueError, match="no ids left"):
            coll.add(clustered(1, D, seed=1))
        with pytest.raises(ValueError, match=r"next_id must be at most"):
            coll.reserve_ids(2**63)
        assert coll.ids().tolist() == [top]
