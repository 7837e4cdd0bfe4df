"""Hard-negative batches: neighbourhoods from an index, never two positives of one another in a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.mining import caption_positives, hard_negatives
from retrieval.train import train
from retrieval.train.sampling import compose_hard_batches


def _space(seed: int = 0, n_images: int = 30, per_image: int = 2):
    """Images in a few tight clusters; each image has ``per_image`` captions near it; some captions repeat."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 8))
    images = centres[np.arange(n_images) % 5] + 0.2 * rng.standard_normal((n_images, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    pair_image = np.repeat(np.arange(n_images), per_image)
    texts = images[pair_image] + 0.1 * rng.standard_normal((len(pair_image), 8))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    captions = [f"caption {p}" for p in range(len(pair_image))]
    captions[0] = captions[10] = captions[21] = "a repeated caption"  # images 0, 5 and 10
    return images.astype(np.float32), texts.astype(np.float32), pair_image, captions


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_batches_never_hold_a_positive_of_another_row(fraction):
    images, texts, pair_image, captions = _space()
    near = hard_negatives(texts, images, caption_positives(captions, pair_image), k=6)
    base = list(np.random.default_rng(1).permutation(len(pair_image)))
    order = compose_hard_batches(near, pair_image, captions, base, batch_size=8, fraction=fraction)
    assert sorted(order) == list(range(len(pair_image)))  # a permutation: every pair once per epoch
    for b in range(len(order) // 8):
        batch = order[b * 8 : (b + 1) * 8]
        assert len({int(pair_image[p]) for p in batch}) == len(batch)  # no other caption of an image
        assert len({captions[p] for p in batch}) == len(batch)  # no exact duplicate caption


def test_batches_are_harder_than_random_ones():
    images, texts, pair_image, captions = _space(2, n_images=60)
    near = hard_negatives(texts, images, caption_positives(captions, pair_image), k=8)
    base = list(np.random.default_rng(3).permutation(len(pair_image)))

    def mean_negative_similarity(order: list[int]) -> float:
        sims = []
        for b in range(len(order) // 12):
            batch = order[b * 12 : (b + 1) * 12]
            s = texts[batch] @ images[pair_image[batch]].T  # [B, B]
            sims.append(s[~np.eye(len(batch), dtype=bool)].mean())
        return float(np.mean(sims))

    hard = compose_hard_batches(near, pair_image, captions, base, batch_size=12, fraction=1.0)
    assert mean_negative_similarity(hard) > mean_negative_similarity(base) + 0.2


def test_training_with_hard_negatives_runs_and_logs(config, monkeypatch):
    import retrieval.train.loop as loop

    calls = []
    original = loop.compose_hard_batches

    def spy(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "compose_hard_batches", spy)
    run = config.replace(hard_negatives=True, hard_negative_warmup=1, epochs=2, hard_negative_neighbours=4)
    result = train(run)
    assert len(calls) == 1  # epoch 0 is the warm-up; epoch 1 is composed from neighbourhoods
    assert result.status == "completed" and result.epochs_completed == 2
    with open(f"{run.out_dir}/metrics.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert any(r.get("kind") == "val" and r.get("epoch") == 2 for r in records)
    with pytest.raises(ValueError, match="hard_negative_fraction"):
        config.replace(hard_negative_fraction=1.5)


def test_mining_from_locked_towers_caches_equals_encoding_again(dataset, tiny_model):
    """Locked towers: mining reads the cached tower outputs (only the heads run) and finds the same
    neighbours as encoding every image and caption through the whole model."""
    import torch

    from retrieval.data import read_pairs
    from retrieval.model import build_model
    from retrieval.train.frozen import FrozenImageFeatures, FrozenTextFeatures
    from retrieval.train.sampling import mine_neighbours

    pairs = read_pairs(dataset["train"])
    config = tiny_model.replace(lock_image=True, lock_text=True, projection="mlp", projection_dropout=0.5)
    torch.manual_seed(0)
    model = build_model(config, captions=pairs.captions(), device="cpu")
    model.train()  # as during training: the heads' dropout must be off while mining
    device = torch.device("cpu")
    text_cache = FrozenTextFeatures(model, pairs.captions(), device)
    image_cache = FrozenImageFeatures(model, pairs.images(), device)
    reference = mine_neighbours(model, pairs.pairs, 4)
    cached = mine_neighbours(model, pairs.pairs, 4, text_cache=text_cache, image_cache=image_cache)
    np.testing.assert_array_equal(cached.neighbours, reference.neighbours)
    assert cached.pair_image == reference.pair_image and model.training


def test_augment_follows_the_image_tower_unless_set(config):
    from retrieval.model import build_model
    from retrieval.train.frozen import augments

    trained = build_model(config.model, captions=["a"], device="cpu")
    locked = build_model(config.model.replace(lock_image=True), captions=["a"], device="cpu")
    assert config.augment is None
    assert augments(config, trained) and not augments(config, locked)
    assert not augments(config.replace(augment=False), trained)
    assert augments(config.replace(augment=True), locked)
