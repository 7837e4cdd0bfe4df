"""embed_corpus into a Milvus Lite location: same items as a local embed, model provenance, tuning
queries, and a resumed ingest that neither doubles nor drops items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import open_collection
from retrieval.embed import embed_corpus, recorded_model_dir, state_dir

from support.milvus import unique_name


def _contents(location: str | Path) -> list[tuple[str, str, tuple[float, ...]]]:
    with open_collection(location, read_only=True) as coll:
        ids = coll.ids()
        rows = zip(coll.get(ids), coll.vectors(ids))
        return sorted(
            (m["modality"], m["path"] if m["modality"] == "image" else m["caption"], tuple(np.round(v, 5)))
            for m, v in rows
        )


@pytest.fixture
def lite(lite_db: Path) -> str:
    return f"milvus-lite://{lite_db}/{unique_name('embed')}"


def test_embed_into_milvus_lite_matches_a_local_embed(fake_model, corpus, config, tmp_path, lite):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    summary = embed_corpus(fake_model, corpus, lite, config, model_dir=model_dir)
    assert summary.embedded == summary.added == 40 and summary.collection_path == lite
    # The record of what is done lives in the toolkit cache, keyed by the location.
    assert summary.state_path == state_dir(lite) and (summary.state_path / "state.json").is_file()
    assert json.loads((summary.state_path / "state.json").read_text())["collection"] == lite
    again = embed_corpus(fake_model, corpus, lite, config)
    assert again.embedded == 0 and again.added == 0 and again.already_done == 40

    embed_corpus(fake_model, corpus, tmp_path / "local", config)
    assert _contents(lite) == _contents(tmp_path / "local")
    with open_collection(lite, read_only=True) as coll:
        assert len(coll) == 40 and coll.fingerprint == fake_model.fingerprint()
        info = coll.info()
    assert info["model_info"] == {
        "model": str(model_dir.resolve()),  # the name search and serve load it by
        "model_dir": str(model_dir.resolve()),
    }
    # Searches on another machine find the model through the collection's model_info.
    summary.state_path.joinpath("state.json").unlink()
    assert recorded_model_dir(lite) == model_dir.resolve()


def test_image_only_embed_stores_caption_tuning_queries(fake_model, corpus, config, lite):
    embed_corpus(fake_model, corpus, lite, config.replace(modality="images"))
    with open_collection(lite, read_only=True) as coll:
        assert len(coll) == 20
        assert coll.info()["tuning_queries"] == ["text->image"]


def test_state_folder_can_be_chosen(fake_model, corpus, config, tmp_path, lite):
    summary = embed_corpus(fake_model, corpus, lite, config.replace(state=str(tmp_path / "record")))
    assert summary.state_path == tmp_path / "record" and not state_dir(lite).joinpath("state.json").exists()
    with pytest.raises(ValueError, match="not embedded from this state folder"):
        embed_corpus(fake_model, corpus, lite, config)  # the default record knows nothing of these items


def test_ingest_interrupted_by_a_lost_server_resumes_without_doubles(
    fake_model, corpus, config, tmp_path, lite, monkeypatch
):
    from indexes.milvus import MilvusCollection
    from indexes.milvus.client import MilvusUnavailableError

    real_add = MilvusCollection.add
    calls = {"n": 0}

    def failing_add(self, vectors, metadata=None, *, ids=None):
        calls["n"] += 1
        if calls["n"] == 3:  # the third shard: the first two reached the server, nothing saved yet
            real_add(self, vectors[:3], metadata[:3], ids=ids[:3])  # part of it arrives
            raise MilvusUnavailableError(f"lost Milvus at {lite} during writing rows")
        return real_add(self, vectors, metadata, ids=ids)

    monkeypatch.setattr(MilvusCollection, "add", failing_add)
    with pytest.raises(MilvusUnavailableError):
        embed_corpus(fake_model, corpus, lite, config)
    monkeypatch.setattr(MilvusCollection, "add", real_add)
    with open_collection(lite, read_only=True) as coll:
        assert 16 < len(coll) < 40  # interrupted mid-ingest

    resumed = embed_corpus(fake_model, corpus, lite, config)
    assert resumed.embedded == 0 and resumed.already_done == 40  # the shards were kept
    embed_corpus(fake_model, corpus, tmp_path / "local", config)
    assert _contents(lite) == _contents(tmp_path / "local")
    with open_collection(lite, read_only=True) as coll:
        assert len(coll) == 40 and np.unique(coll.ids()).size == 40
