"""A real Milvus standalone server (slow suite) stopped in the middle of an embed's ingest: the re-run
completes with every item present exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from indexes import open_collection
from retrieval.embed import embed_corpus

from support.milvus import MilvusTestServer, unique_name

pytestmark = pytest.mark.slow


def _contents(location: str | Path) -> list[tuple[str, str, tuple[float, ...]]]:
    with open_collection(location, read_only=True) as coll:
        ids = coll.ids()
        rows = zip(coll.get(ids), coll.vectors(ids))
        return sorted(
            (m["modality"], m["path"] if m["modality"] == "image" else m["caption"], tuple(np.round(v, 5)))
            for m, v in rows
        )


def test_server_stopped_mid_ingest_then_rerun(
    milvus_server: MilvusTestServer, fake_model, corpus, config, tmp_path, monkeypatch
) -> None:
    from indexes.milvus import MilvusCollection, MilvusUnavailableError

    name = unique_name("embed_outage")
    config = config.replace(shard_size=4, state=str(tmp_path / "record"))  # 10 shards of 4 items
    real_add = MilvusCollection.add
    calls: list[int] = []

    def add_then_stop(self, vectors, metadata=None, *, ids=None):
        out = real_add(self, vectors, metadata, ids=ids)
        calls.append(len(out))
        if len(calls) == 3:  # three shards reached the server, none saved yet
            milvus_server.stop()
        return out

    monkeypatch.setattr(MilvusCollection, "add", add_then_stop)
    t0 = time.perf_counter()
    try:
        with pytest.raises(MilvusUnavailableError) as err:
            embed_corpus(fake_model, corpus, milvus_server.location(name, timeout=5), config)
        assert time.perf_counter() - t0 < 180, "bounded by the location's timeout (generous margin)"
        assert f"/{name}" in str(err.value)
    finally:
        if not milvus_server.running:
            milvus_server.start()  # the other slow tests share this server
    monkeypatch.setattr(MilvusCollection, "add", real_add)
    location = milvus_server.location(name)  # the restarted server may listen on another port
    with open_collection(location, read_only=True) as coll:
        before = len(coll)
    assert len(calls) == 3 and 0 < before < 40

    resumed = embed_corpus(fake_model, corpus, location, config)
    assert resumed.embedded == 0 and resumed.already_done == 40 and resumed.added == 40 - before
    embed_corpus(fake_model, corpus, tmp_path / "local", config.replace(state=None))
    assert _contents(location) == _contents(tmp_path / "local")
    with open_collection(location, read_only=True) as coll:
        assert len(coll) == 40 and np.unique(coll.ids()).size == 40, "nothing lost, nothing doubled"
