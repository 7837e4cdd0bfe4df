"""embed_corpus: counts, metadata, idempotent re-runs, incremental updates, broken inputs, exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexes import Collection
from retrieval.config import EmbedConfig
from retrieval.embed import embed_corpus, recorded_model_dir, state_dir

from support.corpora import write_corpus
from support.keywords import KeywordEncoder


def _contents(path: Path) -> list[tuple[str, str, tuple[float, ...]]]:
    """(modality, path-or-caption, rounded vector) of every item, sorted: comparable across runs."""
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        metadata = coll.get(ids)
        vectors = coll.vectors(ids)
    rows = [
        (m["modality"], m["path"] if m["modality"] == "image" else m["caption"], tuple(np.round(v, 5)))
        for m, v in zip(metadata, vectors)
    ]
    return sorted(rows)


def test_embeds_images_and_texts_with_metadata(fake_model, corpus, config, tmp_path):
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.embedded == 40 and summary.already_done == 0 and summary.skipped == {}
    assert summary.added == 40
    with Collection.open(tmp_path / "coll", read_only=True) as coll:
        assert len(coll) == 40 and coll.dim == fake_model.embed_dim
        assert coll.fingerprint == fake_model.fingerprint()
        ids = coll.ids()
        metadata = coll.get(ids)
        vectors = coll.vectors(ids)
    assert {m["modality"] for m in metadata} == {"image", "text"}
    images = [m for m in metadata if m["modality"] == "image"]
    texts = [m for m in metadata if m["modality"] == "text"]
    assert len(images) == len(texts) == 20
    assert all(Path(m["path"]).exists() and m["caption"].startswith("a ") for m in metadata)
    assert {m["split"] for m in metadata} == {"train", "test"}  # extra manifest fields kept
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Vectors are exactly what the model gives for each item.
    captions = [m["caption"] for m, v in zip(metadata, vectors) if m["modality"] == "text"]
    expected = fake_model.encode_texts(captions).numpy()
    got = np.stack([v for m, v in zip(metadata, vectors) if m["modality"] == "text"])
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("modality,count", [("images", 20), ("texts", 20)])
def test_one_modality(fake_model, corpus, config, tmp_path, modality, count):
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(modality=modality))
    assert summary.embedded == count
    with Collection.open(tmp_path / "coll", read_only=True) as coll:
        assert {m["modality"] for m in coll.get(coll.ids())} == {modality[:-1]}


def test_rerun_of_finished_job_does_nothing(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    shards = sorted(p.name for p in (state_dir(tmp_path / "coll") / "shards").iterdir())
    before = _contents(tmp_path / "coll")
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.embedded == 0 and summary.already_done == 40 and summary.added == 0
    assert sorted(p.name for p in (state_dir(tmp_path / "coll") / "shards").iterdir()) == shards
    assert _contents(tmp_path / "coll") == before


def test_incremental_update_embeds_only_new_items(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    rows = write_corpus(tmp_path / "images", 5, start=20)
    with corpus.open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.embedded == 10 and summary.already_done == 40
    embed_corpus(fake_model, corpus, tmp_path / "fresh", config)
    assert _contents(tmp_path / "coll") == _contents(tmp_path / "fresh")


def test_shard_size_does_not_change_the_result(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "small", config.replace(shard_size=3, batch_size=2))
    embed_corpus(fake_model, corpus, tmp_path / "large", config.replace(shard_size=1000, batch_size=16))
    assert _contents(tmp_path / "small") == _contents(tmp_path / "large")


def test_dataloader_workers_give_the_same_result(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "main", config.replace(num_workers=0))
    embed_corpus(fake_model, corpus, tmp_path / "workers", config.replace(num_workers=2))
    assert _contents(tmp_path / "main") == _contents(tmp_path / "workers")


def test_broken_inputs_are_skipped_counted_and_listed(fake_model, corpus, config, tmp_path):
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    Path(rows[0]["image"]).write_bytes(b"not a png at all")  # corrupt
    Path(rows[1]["image"]).write_bytes(Path(rows[2]["image"]).read_bytes()[:40])  # truncated
    Path(rows[3]["image"]).unlink()  # missing
    rows[4]["caption"] = "   "  # empty caption
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.skipped_total >= 3
    assert summary.embedded + summary.skipped_total >= 36
    errors = [json.loads(line) for line in summary.errors_path.read_text().splitlines()]
    assert len(errors) == summary.skipped_total
    mentioned = " ".join(json.dumps(e) for e in errors)
    broken = [rows[0]["image"], rows[1]["image"], rows[3]["image"]]
    for path in broken:
        assert Path(path).name in mentioned
    with Collection.open(tmp_path / "coll", read_only=True) as coll:
        paths = {m["path"] for m in coll.get(coll.ids()) if m["modality"] == "image"}
    assert not set(broken) & paths
    again = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert again.embedded == 0  # broken items are not retried until they change
    assert len(again.errors_path.read_text().splitlines()) == len(errors)


def test_collection_of_another_model_is_refused(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    other = KeywordEncoder(salt="-other")
    with pytest.raises(ValueError, match=r"keyword-onehot-17-other") as info:
        embed_corpus(other, corpus, tmp_path / "coll", config)
    assert fake_model.fingerprint() in str(info.value)


def test_npy_export_in_clip_retrieval_layout(fake_model, corpus, config, tmp_path):
    out = tmp_path / "export"
    embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(npy_export=str(out)))
    img = sorted((out / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    txt = sorted((out / "text_emb").glob("text_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    assert img[0].name == "img_emb_0.npy" and txt[0].name == "text_emb_0.npy"
    image_vectors = np.concatenate([np.load(p) for p in img])
    assert image_vectors.shape == (20, fake_model.embed_dim) and image_vectors.dtype == np.float32
    assert sum(len(np.load(p)) for p in txt) == 20
    for i, path in enumerate(img):
        table = pq.read_table(out / "metadata" / f"metadata_{i}.parquet")
        assert table.num_rows == len(np.load(path))
        assert {"image_path", "caption"} <= set(table.column_names)


def test_model_dir_is_recorded(fake_model, corpus, config, tmp_path):
    assert recorded_model_dir(tmp_path / "coll") is None
    embed_corpus(fake_model, corpus, tmp_path / "coll", config, model_dir=tmp_path / "model")
    assert recorded_model_dir(tmp_path / "coll") == (tmp_path / "model").resolve()


def test_interrupted_ingest_is_recovered(fake_model, corpus, config, tmp_path, monkeypatch):
    """A crash after shards are committed but before the collection is saved loses nothing."""
    original = Collection.save

    def failing_save(self):
        if len(self):  # fail when vectors are added
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Collection, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    monkeypatch.setattr(Collection, "save", original)
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.embedded == 0 and summary.added == 40
    embed_corpus(fake_model, corpus, tmp_path / "fresh", config)
    assert _contents(tmp_path / "coll") == _contents(tmp_path / "fresh")


def test_config_round_trip_and_validation():
    config = EmbedConfig(modality="texts", engine="ray", num_actors=3)
    assert EmbedConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="modality"):
        EmbedConfig(modality="audio")
    with pytest.raises(ValueError, match="engine"):
        EmbedConfig(engine="spark")
    with pytest.raises(ValueError, match="batch_size"):
        EmbedConfig(batch_size=0)


def test_source_of_wrong_type_is_a_clear_error(fake_model, config, tmp_path):
    with pytest.raises(TypeError, match="source"):
        embed_corpus(fake_model, 42, tmp_path / "coll", config)


def test_manifest_columns_are_configurable(fake_model, corpus, config, tmp_path):
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(corpus.read_text().replace('"image":', '"file":').replace('"caption":', '"text":'))
    config = config.replace(image_column="file", caption_column="text", id_column="image_id", split="test")
    summary = embed_corpus(fake_model, renamed, tmp_path / "coll", config)
    assert summary.embedded == 10  # 5 test images and their captions
    with Collection.open(tmp_path / "coll", read_only=True) as coll:
        metadata = coll.get(coll.ids())
    assert {m["image_id"] for m in metadata} == {f"img_{i:05d}" for i in range(0, 20, 4)}


def test_changed_image_replaces_its_earlier_version(fake_model, corpus, config, tmp_path):
    import os

    from support.images import write_image

    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    path = json.loads(corpus.read_text().splitlines()[0])["image"]  # a red image
    write_image(path, "blue", seed=0)
    os.utime(path, ns=(time_ns := os.stat(path).st_mtime_ns + 10**9, time_ns))
    summary = embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert summary.embedded == 1 and summary.already_done == 39
    with Collection.open(tmp_path / "coll", read_only=True) as coll:
        assert len(coll) == 40
        ids = [
            i
            for i, m in zip(coll.ids(), coll.get(coll.ids()))
            if m["path"] == path and m["modality"] == "image"
        ]
        assert len(ids) == 1
        vector = coll.vectors(ids)[0]
    assert np.argmax(vector) == 2  # the "blue" dimension of the keyword encoder
    embed_corpus(fake_model, corpus, tmp_path / "fresh", config)
    assert _contents(tmp_path / "coll") == _contents(tmp_path / "fresh")


def test_missing_source_leaves_no_collection_behind(fake_model, config, tmp_path):
    with pytest.raises((FileNotFoundError, ValueError)):
        embed_corpus(fake_model, tmp_path / "nope.jsonl", tmp_path / "coll", config)
    assert not (tmp_path / "coll").exists()


def test_one_job_per_collection_at_a_time(fake_model, corpus, config, tmp_path):
    from retrieval.embed.store import EmbedState

    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    with EmbedState(state_dir(tmp_path / "coll")), pytest.raises(ValueError, match="another embedding job"):
        embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    assert embed_corpus(fake_model, corpus, tmp_path / "coll", config).embedded == 0  # lock released


def test_prune_removes_items_that_left_the_corpus(fake_model, corpus, config, tmp_path):
    embed_corpus(fake_model, corpus, tmp_path / "coll", config)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    Path(rows[5]["image"]).unlink()  # a deleted file: its image and caption go
    rows = [r for i, r in enumerate(rows) if i != 5]
    rows[0]["caption"] = "a yellow boat"  # an edited caption: the old one goes, the new one comes
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    kept = embed_corpus(fake_model, corpus, tmp_path / "coll", config)  # without prune nothing is removed
    assert kept.embedded == 1 and kept.pruned == 0
    pruned = embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(prune=True))
    assert pruned.pruned == 3 and pruned.embedded == 0
    embed_corpus(fake_model, corpus, tmp_path / "fresh", config)
    assert _contents(tmp_path / "coll") == _contents(tmp_path / "fresh")
    assert embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(prune=True)).pruned == 0

    write_corpus(tmp_path / "images", 1, start=5)  # the file comes back: embedded again
    rows.insert(5, {"image": str(tmp_path / "images" / "img_00005.png"), "caption": "a cyan dog"})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    back = embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(prune=True))
    assert back.embedded == 2
    embed_corpus(fake_model, corpus, tmp_path / "fresh2", config)
    assert _contents(tmp_path / "coll") == _contents(tmp_path / "fresh2")


def test_image_only_collection_is_tuned_with_its_captions(fake_model, corpus, config, tmp_path):
    """Without captions in the collection, its index is tuned with the source's captions as queries
    (text->image, the searches users send), not with stored images as queries."""
    embed_corpus(fake_model, corpus, tmp_path / "coll", config.replace(modality="images", index="HNSW8"))
    captions = [json.loads(line)["caption"] for line in corpus.read_text().splitlines()]
    with Collection.open(tmp_path / "coll") as coll:
        assert {m["modality"] for m in coll.get(coll.ids())} == {"image"}
        params = coll.tune(recall_target=1.0, k=3)
        assert set(params["tuned_recall_by_queries"]) == {"text->image"}
        assert params["tune_queries"] == len(set(captions))
        # The recall recorded is the one these captions get against exact search.
        queries = fake_model.encode_texts(sorted(set(captions), key=captions.index)).numpy()
        _, found = coll.search(queries, 3)
        ids, vectors = coll.ids(), coll.vectors(coll.ids())
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :3]]
    recall = np.mean([len(set(f) & set(t)) / 3 for f, t in zip(found.tolist(), truth.tolist())])
    assert params["tuned_recall_by_queries"]["text->image"] == pytest.approx(recall, abs=1e-3)
