"""retrieval.encoding: the one inference path, against a plain loop as the reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import encoding
from retrieval.data import ImageDecodeError
from retrieval.encoding import pick_device, prefetch
from retrieval.model import build_model

from support.tiny import CAPTIONS, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), CAPTIONS, device="cpu").eval()


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def reference_images(model, paths):
    """The plain loop: decode, transform, one forward, normalise."""
    transform = model.image_transform()
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.nn.functional.normalize(model.image_features(pixels), dim=-1)


def test_batched_prefetched_images_equal_the_plain_loop(model, image_files):
    encoded = encoding.encode_images(model, image_files, batch_size=3)
    assert encoded.positions == list(range(7)) and encoded.skipped == []
    assert encoded.vectors.dtype == torch.float32 and encoded.vectors.shape == (7, model.embed_dim)
    assert torch.allclose(encoded.vectors, reference_images(model, image_files), atol=1e-5)
    batches = list(encoding.image_batches(model, image_files, batch_size=3))
    assert [b.positions for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


def test_texts_in_several_batches_equal_one_batch(model):
    many = encoding.encode_texts(model, CAPTIONS * 4, batch_size=4)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(model.text_features(model.tokenize(CAPTIONS * 4)), dim=-1)
    assert many.positions == list(range(20))
    assert torch.allclose(many.vectors, plain, atol=1e-5)


@pytest.mark.parametrize("features", [False, True])
def test_texts_run_sorted_by_length_and_come_back_in_order(model, monkeypatch, features):
    """Each window of batches runs shortest text first (little padding); the batches given back hold
    consecutive positions in input order, each row its own text's vector."""
    from retrieval.encoding import texts as text_module

    monkeypatch.setattr(text_module, "SORT_WINDOW", 2)
    rng = np.random.default_rng(0)
    words = [w for c in CAPTIONS for w in c.split()]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 12, size=23)]
    seen = []
    tokenize = model.tokenize
    monkeypatch.setattr(model, "tokenize", lambda batch: seen.append(list(batch)) or tokenize(batch))
    encode = encoding.text_feature_batches if features else encoding.text_batches
    batches = list(encode(model, texts, batch_size=4))
    monkeypatch.undo()
    assert [b.positions for b in batches] == [list(range(s, min(s + 4, 23))) for s in range(0, 23, 4)]
    for batch in seen:  # each tokenized batch is length-sorted, and together they cover every text once
        assert [len(t) for t in batch] == sorted(len(t) for t in batch)
    assert sorted(t for batch in seen for t in batch) == sorted(texts)
    assert max(len(t) for t in seen[0]) <= min(len(t) for t in seen[1])  # one window: the shortest first
    got = torch.cat([b.vectors for b in batches])
    with torch.no_grad():
        if features:
            want = torch.cat([model.text_tower(**dict(model.tokenize([t]))) for t in texts])
        else:
            want = torch.cat([encoding.encode_texts(model, [t]).vectors for t in texts])
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_broken_images_are_skipped_and_reported_or_raise(model, image_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items = [image_files[0], str(broken), image_files[1], str(tmp_path / "missing.png")]
    encoded = encoding.encode_images(model, items, batch_size=2, skip_broken=True)
    assert encoded.positions == [0, 2]
    assert [(s.position, s.item, s.reason) for s in encoded.skipped] == [
        (1, str(broken), "decode_error"),
        (3, str(tmp_path / "missing.png"), "decode_error"),
    ]
    assert torch.allclose(
        encoded.vectors, reference_images(model, [image_files[0], image_files[1]]), atol=1e-5
    )
    with pytest.raises(ImageDecodeError):
        encoding.encode_images(model, items, batch_size=2)


def test_mode_and_device_are_restored(model, image_files):
    model.train()
    try:
        encoding.encode_texts(model, CAPTIONS)
        encoding.encode_images(model, image_files[:2])
        assert model.training
    finally:
        model.eval()
    encoding.encode_texts(model, CAPTIONS, device="cpu")
    assert not model.training and model.device.type == "cpu"


class BlackBox:
    """Offers only encode_images / encode_texts; refuses images whose name contains "bad"."""

    embed_dim = 3

    def __init__(self):
        self.calls = 0

    def encode_images(self, items, batch_size=64, device=None):
        self.calls += 1
        if any("bad" in str(item) for item in items):
            raise ValueError("cannot read a bad image")
        return np.tile([[3.0, 0.0, 4.0]], (len(items), 1))  # not unit: normalised by the encoder

    def encode_texts(self, texts, batch_size=256, device=None):
        self.calls += 1
        return torch.ones(len(texts), 3)


def test_black_box_models_are_called_batch_by_batch_and_broken_items_found():
    box = BlackBox()
    encoded = encoding.encode_images(box, ["a", "bad", "c", "d"], batch_size=2, skip_broken=True)
    assert encoded.positions == [0, 2, 3] and [s.item for s in encoded.skipped] == ["bad"]
    assert torch.allclose(encoded.vectors, torch.tensor([[0.6, 0.0, 0.8]] * 3))
    assert box.calls == 4  # batch [a, bad] fails, then a and bad alone, then batch [c, d]
    assert encoding.encode_texts(box, ["x"] * 5, batch_size=2).vectors.shape == (5, 3)
    with pytest.raises(ValueError, match="bad image"):
        encoding.encode_images(box, ["bad"])


def test_wrong_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="list of strings"):
        encoding.encode_texts(model, "a red car")
    with pytest.raises(ValueError, match="batch_size"):
        encoding.encode_images(model, [], batch_size=0)
    assert encoding.encode_images(model, []).vectors.shape == (0, model.embed_dim)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_prefetch_keeps_order():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_prefetch_reraises_in_the_consumer():
    def broken():
        yield 1
        raise RuntimeError("decoder exploded")

    it = prefetch(broken(), depth=2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="decoder exploded"):
        next(it)


def test_abandoned_prefetch_stops_its_thread():
    it = prefetch(iter(range(10_000)), depth=2)
    assert next(it) == 0
    it.close()
    assert not any(t.name == "encoding-prefetch" and t.is_alive() for t in threading.enumerate())
