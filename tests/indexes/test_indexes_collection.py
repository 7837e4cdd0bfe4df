"""Collection basics: create/open/add/get/vectors/search against a numpy reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk

from indexes import Collection


def assert_topk_equal(scores, ids, ref_scores, ref_ids, tol=1e-5):
    """Tie-tolerant: scores match; ids match wherever the score is not tied with a neighbour."""
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=tol)
    for r in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            if ids[r, c] != ref_ids[r, c]:
                tied = np.abs(ref_scores[r] - ref_scores[r, c]) <= tol
                assert tied.sum() > 1 or c == ids.shape[1] - 1, (r, c)
                assert ids[r, c] not in ids[r, :c]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_numpy_topk(tmp_path: Path, metric: str) -> None:
    x = clustered(2_000, 24, seed=1)
    q = clustered(50, 24, seed=2)
    with Collection.create(tmp_path / "c", 24, metric=metric, index="Flat") as coll:
        ids = coll.add(x)
        assert ids.dtype == np.int64 and ids.tolist() == list(range(2_000))
        scores, found = coll.search(q, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and scores.shape == (50, 10)
    ref_s, ref_i = exact_topk(q, x, 10, metric)
    assert_topk_equal(scores, found, ref_s, ref_i, tol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first, higher is better"


def test_ties_are_tolerated(tmp_path: Path) -> None:
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # 12 vectors, groups of 3 identical
    with Collection.create(tmp_path / "c", 4, index="Flat") as coll:
        coll.add(x)
        scores, found = coll.search(np.eye(4, dtype=np.float32)[:1], 3)
    assert sorted(found[0].tolist()) == [0, 1, 2]
    np.testing.assert_allclose(scores[0], [1, 1, 1])


def test_roundtrip_metadata_vectors_and_info(tmp_path: Path) -> None:
    x = clustered(30, 8)
    meta = [{"i": i, "tag": "even" if i % 2 == 0 else "odd", "nested": {"a": [1, 2]}} for i in range(30)]
    original = json.dumps(meta)
    with Collection.create(tmp_path / "c", 8, index="Flat", fingerprint="model-abc") as coll:
        ids = coll.add(x.astype(np.float64), meta)  # float64 is converted
        assert len(coll) == 30
    assert json.dumps(meta) == original, "inputs are never mutated"
    with Collection.open(tmp_path / "c") as coll:
        assert coll.dim == 8 and coll.metric == "ip" and coll.fingerprint == "model-abc"
        assert coll.index_spec == "Flat" and coll.path == tmp_path / "c"
        assert coll.get([ids[3], ids[0]]) == [meta[3], meta[0]]
        got = coll.vectors(ids[[5, 1]])
        assert got.dtype == np.float32 and np.array_equal(got, x[[5, 1]])
        np.testing.assert_array_equal(coll.ids(), ids)
        assert coll.fields() == ["i", "nested", "tag"]
        info = coll.info()
        assert info["count"] == 30 and info["dim"] == 8 and info["fingerprint"] == "model-abc"
        assert info["index_spec"] == "Flat" and not info["needs_rebuild"]
        coll.get([ids[0]])[0]["i"] = 999  # editing the returned dict changes nothing stored
        assert coll.get([ids[0]])[0]["i"] == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    for key in ("format_version", "dim", "metric", "count", "index_spec", "fingerprint", "params"):
        assert key in manifest
    assert manifest["count"] == 30


def test_ids_stable_after_remove_and_reopen(tmp_path: Path) -> None:
    x = clustered(20, 8)
    with Collection.create(tmp_path / "c", 8, index="Flat") as coll:
        first = coll.add(x[:10])
        coll.remove(first[[2, 3]])
    with Collection.open(tmp_path / "c") as coll:
        second = coll.add(x[10:])
        assert second[0] == 10, "ids are never reused"
        assert len(coll) == 18
        _, found = coll.search(x[2], 1)
        assert found[0, 0] != 2
        _, found = coll.search(x[12], 1)
        assert found[0, 0] == 12


def test_padding_when_fewer_than_k(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", 4, index="Flat") as coll:
        scores, ids = coll.search(np.ones(4, dtype=np.float32), 3)
        assert ids.tolist() == [[-1, -1, -1]] and np.isneginf(scores).all()
        coll.add(np.eye(4, dtype=np.float32)[:2])
        scores, ids = coll.search(np.ones((2, 4), dtype=np.float32), 5)
    assert (ids[:, :2] >= 0).all() and (ids[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()


def test_l2_scores_are_negative_squared_distances(tmp_path: Path) -> None:
    x = np.array([[0, 0], [3, 4]], dtype=np.float32)
    with Collection.create(tmp_path / "c", 2, metric="l2", index="Flat") as coll:
        coll.add(x)
        scores, ids = coll.search(np.zeros(2, dtype=np.float32), 2)
    assert ids.tolist() == [[0, 1]]
    np.testing.assert_allclose(scores[0], [0.0, -25.0])


def test_context_manager_discards_on_exception(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", 4, index="Flat") as coll:
        coll.add(np.eye(4, dtype=np.float32))
    with pytest.raises(RuntimeError), Collection.open(tmp_path / "c") as coll:
        coll.add(np.eye(4, dtype=np.float32))
        raise RuntimeError("boom")
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert len(coll) == 4


def test_empty_add_and_remove_are_noops(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", 4, index="Flat") as coll:
        assert coll.add(np.zeros((0, 4), dtype=np.float32)).shape == (0,)
        coll.remove([])
        assert len(coll) == 0


def test_cli_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.cli import main

    with Collection.create(tmp_path / "c", 4, index="Flat", fingerprint="fp1") as coll:
        coll.add(np.eye(4, dtype=np.float32), [{"k": "v"}] * 4)
    assert main(["info", str(tmp_path / "c")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 4 and out["fingerprint"] == "fp1" and out["fields"] == ["k"]
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_import_indexes_loads_no_torch() -> None:
    code = "import sys, indexes; from indexes import Collection; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_numpy_metadata_values_are_converted(tmp_path: Path) -> None:
    meta = [{"n": np.int64(3), "f": np.float32(0.5), "v": np.arange(2), "b": np.bool_(True)}]
    with Collection.create(tmp_path / "c", 4, index="Flat") as coll:
        ids = coll.add(np.eye(4, dtype=np.float32)[:1], meta)
        assert coll.get(ids) == [{"n": 3, "f": 0.5, "v": [0, 1], "b": True}]
        _, found = coll.search(np.eye(4)[0], 1, where={"n": np.int64(3), "b": True})
        assert found.tolist() == [[0]]


def test_concurrent_searches_on_one_handle(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = clustered(2_000, 16, seed=40)
    with Collection.create(tmp_path / "c", 16, index="HNSW32") as coll:
        coll.add(x, [{"g": i % 4} for i in range(2_000)])
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        wheres = [None, {"g": 1}, {"g": [2, 3]}, None] * 4
        serial = [coll.search(x[:20], 5, where=w)[1] for w in wheres]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda w: coll.search(x[:20], 5, where=w)[1], wheres))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_model_info_is_kept(tmp_path: Path) -> None:
    info = {"source": "hub", "id": "org/model", "revision": "0123abcd"}
    with Collection.create(tmp_path / "c", 4, index="Flat", fingerprint="fp", model_info=info) as coll:
        coll.add(np.eye(4, dtype=np.float32))
        info["id"] = "changed"  # the caller's dict is not kept by reference
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.model_info == {"source": "hub", "id": "org/model", "revision": "0123abcd"}
        assert coll.info()["model_info"] == coll.model_info
    with pytest.raises(ValueError, match="model_info must be a JSON-able dict"):
        Collection.create(tmp_path / "d", 4, model_info={"x": object()})
