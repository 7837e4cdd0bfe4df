"""Embedding bookkeeping: item identity, tar references, shard names, resuming after another writer."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from indexes import Collection
from retrieval.data import Pair, load_image, read_pairs
from retrieval.embed import embed_corpus, state_dir
from retrieval.embed.items import corpus_items, image_items, text_items
from retrieval.embed.store import EmbedState

from support.corpora import write_corpus
from support.images import png_bytes
from support.keywords import DIM, keyword_vector


def _contents(path: Path) -> list[tuple[str, str]]:
    with Collection.open(path, read_only=True) as coll:
        return sorted(
            (m["modality"], m["path"] if m["modality"] == "image" else m["caption"])
            for m in coll.get(coll.ids())
        )


def test_an_items_identity_normalises_its_path(tmp_path):
    rows = write_corpus(tmp_path / "images", 2)
    first = rows[0]["image"]
    detour = str(Path(first).parent / ".." / "images" / "." / Path(first).name)
    assert detour != first
    pairs = [
        Pair(first, "a caption", "x"),
        Pair(detour, "another caption", "x"),
        Pair(rows[1]["image"], "b", "y"),
    ]
    items, skips = image_items(pairs)
    assert not skips
    assert [it.ref for it in items] == [first, rows[1]["image"]]  # one item per file
    texts, _ = text_items([Pair(first, "same", "x"), Pair(detour, "same", "x")])
    assert {t.metadata["path"] for t in texts} == {first}  # the same pair twice: repeats of one item
    assert [t.key.rsplit(":", 1)[1] for t in texts] == ["0", "1"]


def test_tar_references_survive_a_hash_in_folder_names(tmp_path):
    folder = tmp_path / "run#1" / "part#2"
    folder.mkdir(parents=True)
    shard = folder / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("k1.png", png_bytes("red")), ("k1.txt", b"a red square")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pairs = read_pairs(shard)
    assert pairs.captions() == ["a red square"] and not pairs.skipped
    ref = pairs[0].image
    assert load_image(ref).size == load_image(png_bytes("red")).size
    items, skips = corpus_items(pairs.pairs, "both")
    assert not skips and len(items) == 2


def _shard(state: EmbedState, key: str) -> str:
    from retrieval.embed.items import Item

    item = Item(key, "image", key, {"modality": "image", "path": key})
    return state.write_shard("image", [item], np.ones((1, 4), np.float32), []).name


def test_shard_names_are_never_reused(tmp_path):
    with EmbedState(tmp_path / "embed") as state:
        state.check_model("fp", 4)
        names = [_shard(state, "a"), _shard(state, "b")]
        (state.shard_dir / names[-1]).unlink()  # the newest shard file is deleted (by hand, or found corrupt)
        names.append(_shard(state, "c"))
        state.write_removal({"a"})
    with EmbedState(tmp_path / "embed") as state:
        names.append(_shard(state, "d"))
        assert len(set(names)) == len(names), names
        assert [s.name for s in state.shards()][-1] == names[-1]


def test_a_deleted_last_shard_does_not_hide_new_items(tmp_path, corpus, config, fake_model):
    out = tmp_path / "coll"
    embed_corpus(fake_model, corpus, out, config)
    shards = sorted((state_dir(out) / "shards").glob("*.npz"))
    shards[-1].unlink()
    new_rows = write_corpus(tmp_path / "more", 2, start=100)
    with corpus.open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in new_rows)
    embed_corpus(fake_model, corpus, out, config)
    paths = {p for m, p in _contents(out) if m == "image"}
    assert {r["image"] for r in new_rows} <= paths


@pytest.mark.parametrize("crash", ["before_save", "after_save"])
def test_resume_after_another_writers_save_neither_drops_nor_doubles(
    tmp_path, corpus, config, fake_model, monkeypatch, crash
):
    out = tmp_path / "coll"
    original = Collection.save

    def crashing_save(self):
        if len(self) and crash == "before_save":
            raise KeyboardInterrupt
        original(self)
        if len(self) and crash == "after_save":
            raise KeyboardInterrupt

    monkeypatch.setattr(Collection, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(fake_model, corpus, out, config)
    monkeypatch.setattr(Collection, "save", original)
    # another writer adds an item of its own and saves before the embedding job resumes
    other = {"modality": "image", "path": "/elsewhere/other.png", "caption": "other", "image_id": "other"}
    with Collection.open(out) as coll:
        coll.add(keyword_vector("red")[None, :DIM], [other])
        coll.save()
    embed_corpus(fake_model, corpus, out, config)
    embed_corpus(fake_model, corpus, tmp_path / "fresh", config)
    assert _contents(out) == sorted([*_contents(tmp_path / "fresh"), ("image", other["path"])])
