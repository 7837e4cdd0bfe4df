"""A real Milvus standalone server (slow suite): index kinds Lite lacks, many segments, and an outage mid-ingest.

The contract tests in test_indexes_contract.py run against the same server (their
``milvus-server`` parameter)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall
from milvus_support import MilvusTestServer, unique_name

from indexes import copy_collection, create_collection, open_collection
from indexes.milvus import MilvusUnavailableError

pytestmark = pytest.mark.slow
D = 32


def test_ids_and_vectors_across_many_segments(milvus_server: MilvusTestServer) -> None:
    n = 16_000
    x = clustered(n, D, seed=31)
    loc = milvus_server.location(unique_name("segments"))
    with create_collection(loc, D, index="Flat") as coll:
        # one segment larger than a page of ids() (8,192 rows), then five small ones
        for part in np.split(np.arange(n), [10_000, 11_200, 12_400, 13_600, 14_800]):
            coll.add(x[part], [{"i": int(i)} for i in part])
            coll.save()  # one sealed segment per part
        coll.remove(np.arange(0, n, 7))
    keep = np.setdiff1d(np.arange(n), np.arange(0, n, 7))
    with open_collection(loc, read_only=True) as coll:
        np.testing.assert_array_equal(coll.ids(), keep)
        np.testing.assert_array_equal(coll.vectors(keep[::-97]), x[keep[::-97]])
        assert coll.get(keep[:3]) == [{"i": int(i)} for i in keep[:3]]
        _, ids = coll.search(x[keep[:20]], 1)
    np.testing.assert_array_equal(ids[:, 0], keep[:20])


def test_ivf_pq_with_refine_and_tuning(milvus_server: MilvusTestServer) -> None:
    x, q = clustered(5_000, D, seed=32), clustered(40, D, seed=33)
    loc = milvus_server.location(unique_name("ivfpq"))
    with create_collection(loc, D, index="IVF32,PQ8", recall_target=0.9) as coll:
        coll.add(x)
        coll.save()  # waits for the index, then tunes nprobe and refine
        params = coll.params
        assert coll.info()["milvus_index"]["index_type"] == "IVF_PQ"
        assert {"nprobe", "refine", "tuned_recall"} <= set(params)
        scores, ids = coll.search(q, 10)
    _, truth = exact_topk(q, x, 10)
    assert recall(ids, truth) >= 0.85
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5, atol=1e-5)


def test_server_stopped_mid_ingest_then_rerun(milvus_server: MilvusTestServer, tmp_path: Path) -> None:
    """The server dies half-way through a copy: the copy fails promptly naming the location, and once the
    server is back the same call finishes with every item present exactly once."""
    x = clustered(3_000, D, seed=34)
    src = str(tmp_path / "src")
    with create_collection(src, D, index="Flat", fingerprint="fpX") as coll:
        coll.add(x, [{"i": i} for i in range(3_000)])
    name = unique_name("outage")
    stopped: list[int] = []

    def stop_server(done: int, total: int) -> None:
        if done >= 1_000 and not stopped:
            milvus_server.stop()
            stopped.append(done)

    t0 = time.perf_counter()
    try:
        with pytest.raises(MilvusUnavailableError) as err:
            copy_collection(src, milvus_server.location(name, timeout=5), batch=250, progress=stop_server)
        assert time.perf_counter() - t0 < 180, "bounded by the location's timeout (generous margin)"
        assert f"/{name}" in str(err.value)
    finally:
        if not milvus_server.running:
            milvus_server.start()  # the other slow tests share this server
    dst = milvus_server.location(name)  # the restarted server may listen on another port
    with open_collection(dst, read_only=True) as coll:
        before = len(coll)
    assert stopped and 0 < before < 3_000
    report = copy_collection(src, dst, batch=250)
    assert report.already_there == before and report.copied == 3_000 - before
    with open_collection(dst, read_only=True) as coll:
        assert len(coll) == 3_000, "nothing lost, nothing doubled"
        np.testing.assert_array_equal(coll.ids(), np.arange(3_000))
        np.testing.assert_array_equal(coll.vectors(np.arange(0, 3_000, 11)), x[::11])
        assert coll.get([0, 2_999]) == [{"i": 0}, {"i": 2_999}]
        assert coll.fingerprint == "fpX"
