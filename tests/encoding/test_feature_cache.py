"""The feature cache: hits and misses by content, invalidation by bytes / tower / transform, reads
instead of computing, bounded size, two processes at once, a damaged file, and training's locked
tower features read back by embed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import encoding
from retrieval.data import ImageDecodeError
from retrieval.encoding.feature_cache import FeatureCache, content_hash, entry_key, namespace
from retrieval.model import build_model

from support.corpora import write_corpus
from support.tiny import CAPTIONS, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), CAPTIONS, device="cpu").eval()


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_features_are_stored_then_read_by_content(model, image_files, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    plain = encoding.encode_images(model, image_files, batch_size=3).vectors
    first = encoding.encode_images(model, image_files, batch_size=3, feature_cache=cache).vectors
    assert (cache.hits, cache.misses) == (0, 7) and cache.stats()[0] == 7
    again = encoding.encode_images(model, image_files, batch_size=3, feature_cache=cache).vectors
    assert (cache.hits, cache.misses) == (7, 7)
    assert torch.equal(first, plain) and torch.equal(again, plain)
    # DataLoader worker processes read the same entries
    workers = encoding.encode_images(model, image_files, batch_size=3, num_workers=2, feature_cache=cache)
    assert torch.equal(workers.vectors, plain) and cache.stats()[0] == 7
    # the same bytes under another name: one entry
    copy = tmp_path / "copy.png"
    shutil.copy(image_files[0], copy)
    encoding.encode_images(model, [str(copy)], feature_cache=cache)
    assert cache.stats()[0] == 7 and cache.hits == 7 + 7 + 1


def test_text_features_are_stored_then_read_by_text_and_tower(model, tmp_path, monkeypatch):
    """Captions are cached like images: by their text under the text tower's fingerprint; a hit skips
    the tower, another tower (other weights) misses, and ``feature_cache=None`` never touches it."""
    cache = FeatureCache(tmp_path / "cache")
    texts = [*CAPTIONS, CAPTIONS[0].upper(), CAPTIONS[1]]
    plain = encoding.encode_texts(model, texts, batch_size=2).vectors
    first = encoding.encode_texts(model, texts, batch_size=2, feature_cache=cache).vectors
    assert (cache.hits, cache.misses) == (0, len(texts)) and cache.stats()[0] == len(set(texts))
    torch.testing.assert_close(first, plain, rtol=0, atol=1e-6)
    runs = []
    forward = type(model.text_tower).forward
    monkeypatch.setattr(
        type(model.text_tower), "forward", lambda self, *a, **k: runs.append(1) or forward(self, *a, **k)
    )
    again = encoding.encode_texts(model, texts, batch_size=2, feature_cache=cache).vectors
    features = encoding.encode_text_features(model, texts[:2], feature_cache=cache).vectors
    assert not runs and cache.hits == len(texts) + 2  # read, not computed
    torch.testing.assert_close(again, first, rtol=0, atol=1e-6)
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(
            features, model.text_tower(**dict(model.tokenize(texts[:2]))), rtol=1e-5, atol=1e-5
        )
    torch.manual_seed(1)
    other = build_model(tiny_config(), CAPTIONS, device="cpu").eval()
    before = cache.misses
    encoding.encode_texts(other, texts, feature_cache=cache)
    assert cache.misses == before + len(texts) and cache.stats()[0] == 2 * len(set(texts))
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "default"))
    encoding.encode_texts(model, texts, feature_cache=None)
    assert not (tmp_path / "default" / "features").exists()
    encoding.encode_texts(model, texts, feature_cache=True)  # True: the default cache
    assert FeatureCache().stats()[0] == len(set(texts))


def test_what_is_stored_is_what_is_read(model, image_files, tmp_path):
    """The cache is read instead of the tower: an entry changed behind its back comes out."""
    cache = FeatureCache(tmp_path / "cache")
    encoding.encode_images(model, image_files[:2], feature_cache=cache)
    space = namespace(encoding.towers.fingerprint(model, "image"), model.image_transform().config())
    key = entry_key(space, content_hash(Path(image_files[0]).read_bytes()))
    planted = np.arange(model.image_tower.output_dim, dtype=np.float32)
    cache.put_many([(key, planted)])
    got = encoding.encode_images(model, image_files[:2], feature_cache=cache).vectors
    with torch.no_grad():
        expected = model.project_image(torch.from_numpy(planted)[None])  # [1, D]
    assert torch.allclose(got[0], expected[0], atol=1e-6)
    features = encoding.encode_image_features(model, image_files[:1], feature_cache=cache).vectors
    assert torch.equal(features[0], torch.from_numpy(planted))


def test_changed_bytes_tower_or_transform_miss(model, image_files, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    encoding.encode_images(model, image_files, feature_cache=cache)
    # one file rewritten: only it is computed again, and its new vector is the right one
    Image.new("RGB", (24, 20), (250, 10, 10)).save(image_files[3])
    before = cache.misses
    got = encoding.encode_images(model, image_files, feature_cache=cache).vectors
    assert cache.misses - before == 1
    assert torch.allclose(got, encoding.encode_images(model, image_files).vectors, atol=1e-6)
    # another tower (other weights): all computed, none of the old entries read
    torch.manual_seed(5)
    other = build_model(tiny_config(), CAPTIONS, device="cpu").eval()
    before = cache.misses
    got = encoding.encode_images(other, image_files, feature_cache=cache).vectors
    assert cache.misses - before == 7
    assert torch.allclose(got, encoding.encode_images(other, image_files).vectors, atol=1e-6)
    # the same weights under another preprocessing (input side): computed again
    resized = build_model(tiny_config(image_size=24), CAPTIONS, device="cpu").eval()
    resized.load_state_dict(model.state_dict())
    before = cache.misses
    encoding.encode_images(resized, image_files, feature_cache=cache)
    assert cache.misses - before == 7
    # a tower trained in place gets another fingerprint: its stale features are never read
    with torch.no_grad():
        next(other.image_tower.parameters()).add_(0.5)
    got = encoding.encode_images(other, image_files, feature_cache=cache).vectors
    assert torch.allclose(got, encoding.encode_images(other, image_files).vectors, atol=1e-6)


def test_broken_images_and_in_memory_images_are_not_cached(model, image_files, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items = [image_files[0], str(broken), Image.open(image_files[1]).convert("RGB")]
    encoded = encoding.encode_images(model, items, skip_broken=True, feature_cache=cache)
    assert encoded.positions == [0, 2] and [s.reason for s in encoded.skipped] == ["decode_error"]
    assert str(broken) in encoded.skipped[0].detail
    assert cache.stats()[0] == 1  # only the file that decoded; the PIL image has no bytes to key by
    with pytest.raises(ImageDecodeError, match=r"broken\.png"):
        encoding.encode_images(model, [str(broken)], feature_cache=cache)


def test_the_cache_stays_under_its_cap_dropping_the_least_recently_used(tmp_path):
    cache = FeatureCache(tmp_path / "cache", max_bytes=40 * 400)  # room for 40 rows of 100 floats
    rows = [(hashlib.sha256(bytes([i])).digest(), np.full(100, i, np.float32)) for i in range(30)]
    cache.put_many(rows)
    assert cache.stats() == (30, 30 * 400)
    assert cache.get_many([rows[0][0]])  # row 0 is now the most recently used
    more = [(hashlib.sha256(bytes([100 + i])).digest(), np.full(100, i, np.float32)) for i in range(20)]
    cache.put_many(more)
    count, size = cache.stats()
    assert size <= cache.max_bytes and count == 36  # evicted down to 90 % of the cap
    assert rows[0][0] in cache.get_many([rows[0][0]])  # recently used: kept
    assert not cache.get_many([rows[1][0]])  # the oldest: gone
    assert len(cache.get_many([k for k, _ in more])) == 20  # the newest: all kept
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        FeatureCache(tmp_path / "x", max_bytes=-1)


def test_the_size_check_reads_an_index_not_the_features(tmp_path):
    """Every write checks the cap; with large rows (a prefix row is 60 KB) that check must not read
    the stored features, also in a cache written before the index existed."""
    folder = tmp_path / "cache"
    folder.mkdir()
    old = sqlite3.connect(folder / "features.sqlite3")  # the layout earlier versions wrote
    old.execute(
        "CREATE TABLE features (key BLOB PRIMARY KEY, dim INTEGER NOT NULL, value BLOB NOT NULL, "
        "size INTEGER NOT NULL, used REAL NOT NULL) WITHOUT ROWID"
    )
    old.execute("CREATE INDEX features_used ON features (used)")
    key = hashlib.sha256(b"old").digest()
    old.execute("INSERT INTO features VALUES (?, 3, ?, 12, 1.0)", (key, np.ones(3, np.float32).tobytes()))
    old.commit()
    old.close()
    cache = FeatureCache(folder, max_bytes=10_000)
    assert (cache.get_many([key])[key] == 1).all()  # what the old layout stored is still read
    conn = cache._connection()
    for query in (
        "SELECT COALESCE(SUM(size), 0) FROM features",
        "SELECT key, size FROM features ORDER BY used",
    ):
        plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + query))
        assert "COVERING INDEX" in plan, plan
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "features_used" not in indexes  # the old index is not kept up to date for nothing
    cache.put_many([(hashlib.sha256(bytes([i])).digest(), np.full(1000, i, np.float32)) for i in range(4)])
    assert cache.stats()[1] <= cache.max_bytes


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from retrieval.encoding.feature_cache import FeatureCache

    folder, seed = sys.argv[1], int(sys.argv[2])
    cache = FeatureCache(folder, max_bytes=300 * 256)  # small: both writers keep evicting
    rng = np.random.default_rng(seed)
    for round in range(40):
        ids = rng.integers(0, 400, size=12)
        keys = [hashlib.sha256(str(i).encode()).digest() for i in ids]
        cache.put_many([(k, np.full(64, i, np.float32)) for k, i in zip(keys, ids)])
        found = cache.get_many(keys)
        for k, i in zip(keys, ids):
            if k in found:
                assert (found[k] == i).all(), (i, found[k][:3])
    print("ok")
    """
)


def test_two_processes_writing_one_cache(tmp_path):
    folder = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    with sqlite3.connect(folder / "features.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = FeatureCache(folder, max_bytes=300 * 256)
    count, size = cache.stats()
    assert count > 0 and size <= cache.max_bytes
    for i in range(400):  # every entry left holds the value written for its key
        key = hashlib.sha256(str(i).encode()).digest()
        value = cache.get(key)
        assert value is None or (value == i).all()


def test_a_damaged_cache_file_is_ignored_with_a_warning(model, image_files, tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "features.sqlite3").write_bytes(b"this is not a database" * 100)
    cache = FeatureCache(folder)
    got = encoding.encode_images(model, image_files, feature_cache=cache).vectors
    assert torch.equal(got, encoding.encode_images(model, image_files).vectors)
    assert any("not used" in r.getMessage() for r in caplog.records)


def test_training_stores_locked_features_that_embed_then_reads(tmp_path, monkeypatch):
    """train (locked image tower) -> embed the same images: the tower runs only for new images."""
    from retrieval.config import EmbedConfig, TrainConfig
    from retrieval.embed import embed_corpus
    from retrieval.model import load_model
    from retrieval.towers import CNNImageTower
    from retrieval.train import train

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    rows = write_corpus(tmp_path / "images", 24)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]), encoding="utf-8")
    model_config = tiny_config(lock_image=True)
    result = train(
        TrainConfig(
            train_data=str(manifest),
            out_dir=str(tmp_path / "run"),
            model=model_config,
            epochs=1,
            batch_size=8,
            val_fraction=0.25,
            device="cpu",
            progress=False,
            hard_negatives=False,
            checkpoint_every=0,
        )
    )
    stored, _ = FeatureCache().stats()
    assert stored == 16  # train and validation images of the run

    calls = []
    original = CNNImageTower.forward

    def counting(self, pixel_values):
        calls.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(CNNImageTower, "forward", counting)
    model = load_model(result.model_dir, device="cpu")
    every = tmp_path / "all.jsonl"
    every.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    embed_corpus(model, str(every), tmp_path / "collection", EmbedConfig(modality="images", progress=False))
    assert sum(calls) == 24 - 16  # only the images training never saw
    calls.clear()
    embed_corpus(
        model,
        str(every),
        tmp_path / "again",
        EmbedConfig(modality="images", progress=False, feature_cache=False),
    )
    assert sum(calls) == 24  # --no-feature-cache: every image through the tower
