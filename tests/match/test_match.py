"""The match head: loss and gradients against a slow reference, mined pairs, calibration, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrieval.config import MatchConfig
from retrieval.match import (
    MatchHead,
    calibration_bins,
    expected_calibration_error,
    match_loss,
    mined_pairs,
    train_match_head,
)
from retrieval.mining import caption_positives, hard_negatives, image_positives


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _slow_logit(head: MatchHead, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One pair at a time, the formula of the module docstring written out."""
    w1, b1 = head.mlp[0].weight, head.mlp[0].bias
    w2, b2 = head.mlp[2].weight, head.mlp[2].bias
    cos = sum(u[d] * v[d] for d in range(len(u)))
    x = torch.cat([u * v, (u - v).abs(), u, v])
    hidden = torch.stack([0.5 * h * (1 + torch.erf(h / math.sqrt(2))) for h in (w1 @ x + b1)])
    return (head.scale * cos + head.bias + (w2 @ hidden + b2)[0]) / head.temperature


def test_loss_and_gradients_match_a_slow_reference():
    torch.manual_seed(0)
    head = MatchHead(6, hidden=5)
    torch.nn.init.normal_(head.mlp[2].weight)  # not the zero init, so the MLP matters
    head.temperature.fill_(1.7)
    u = torch.nn.functional.normalize(torch.randn(7, 6), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(7, 6), dim=-1)
    labels = torch.tensor([1, 0, 0, 1, 0, 1, 0.0])

    loss = match_loss(head(u, v), labels)
    fast = torch.autograd.grad(loss, list(head.parameters()))
    slow_terms = []
    for i in range(7):
        z = _slow_logit(head, u[i], v[i])
        p = 1 / (1 + torch.exp(-z))
        slow_terms.append(-(labels[i] * torch.log(p) + (1 - labels[i]) * torch.log(1 - p)))
    slow = torch.stack(slow_terms).mean()
    reference = torch.autograd.grad(slow, list(head.parameters()))
    assert loss.item() == pytest.approx(slow.item(), rel=1e-5)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_fresh_head_is_logistic_in_the_cosine():
    head = MatchHead(4)
    u = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    torch.testing.assert_close(head(u, v), 10.0 * (u * v).sum(-1) - 5.0)
    with pytest.raises(ValueError, match=r"shape \[B, 4\]"):
        head(u[:, :3], v[:, :3])


def _toy(seed: int = 0, n_images: int = 12):
    """Images with 2 captions each near them; one caption text is shared by images 0 and 1."""
    rng = np.random.default_rng(seed)
    images = _unit(rng.standard_normal((n_images, 8)))
    g = np.repeat(np.arange(n_images), 2)
    texts = _unit(images[g] + 0.3 * rng.standard_normal((len(g), 8)))
    captions = [f"caption {t}" for t in range(len(g))]
    captions[0] = captions[2] = "the same words"  # caption of image 0 and of image 1
    return images, texts, captions, g


def test_hard_negatives_never_hold_a_positive():
    images, texts, captions, g = _toy()
    t_pos = caption_positives(captions, g)
    assert t_pos[0] == {0, 1} and t_pos[2] == {0, 1} and t_pos[1] == {0}
    i_pos = image_positives(captions, g, len(images))
    assert i_pos[0] == {0, 1, 2} and i_pos[1] == {0, 2, 3}
    t2i = hard_negatives(texts, images, t_pos, k=5)
    i2t = hard_negatives(images, texts, i_pos, k=7)
    for row, own in zip(t2i, t_pos):
        assert not set(row.tolist()) & own and len(set(row.tolist())) == 5
    for row, own in zip(i2t, i_pos):
        assert not set(row.tolist()) & own
    # the nearest non-positive, by brute force
    scores = texts @ images.T
    for t, own in enumerate(t_pos):
        best = next(i for i in np.argsort(-scores[t]) if i not in own)
        assert t2i[t, 0] == best
    assert (hard_negatives(texts[:1], images[:2], [{0, 1}], k=3) == -1).all()  # nothing left: padding


def test_mined_pairs_label_only_true_matches_positive():
    images, texts, captions, g = _toy()
    img, txt, lab, _ = mined_pairs(images, texts, captions, g, 6, 3, np.random.default_rng(0))
    t_pos = caption_positives(captions, g)
    for i, t, y in zip(img, txt, lab):
        assert (y == 1) == (i in t_pos[t])
    assert lab.sum() == len(g) and (lab == 0).sum() == 3 * (len(g) + len(images))


def test_calibration_measures():
    p, y = np.array([0.05, 0.15, 0.95, 0.85]), np.array([0, 0, 1, 1])
    bins = calibration_bins(p, y, n_bins=10)
    assert [b["count"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert expected_calibration_error(p, y) == pytest.approx((0.05 + 0.15 + 0.05 + 0.15) / 4)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0


class _VectorModel:
    """A 'model' whose items are already vectors: images and captions are rows of two tables."""

    def __init__(self, images: np.ndarray, texts: np.ndarray) -> None:
        self.images, self.texts = images, texts


class _Pairs:
    def __init__(self, images, texts, captions, g):
        self._n, self._captions, self._g = len(images), captions, g

    def images(self):
        return [f"img{i}" for i in range(self._n)]

    def captions(self):
        return list(self._captions)

    def text_to_image(self):
        return self._g


def test_training_separates_matches_and_calibrates(monkeypatch, tmp_path):
    import retrieval.match as match

    images, texts, captions, g = _toy(seed=1, n_images=40)
    val = _toy(seed=2, n_images=20)
    tables = {id(captions): (images, texts), id(val[2]): (val[0], val[1])}

    def encode(model, pairs):
        u, v = tables[id(pairs._captions)]
        return u, v, pairs.captions(), np.asarray(pairs.text_to_image())

    monkeypatch.setattr(match, "_encode", encode)
    result = train_match_head(
        None, _Pairs(images, texts, captions, g), MatchConfig(epochs=30, hidden=16), val_pairs=_Pairs(*val)
    )
    assert result.losses[-1] < result.losses[0]
    assert result.val_ece is not None and result.val_ece <= result.val_ece_before + 1e-6
    head = result.head
    p_pos = head.probabilities(val[0][val[3]], val[1])  # each caption with its image
    p_neg = head.probabilities(val[0][(val[3] + 5) % 20], val[1])
    assert p_pos.mean() > p_neg.mean() + 0.3
    head.save(tmp_path / "head")
    again = MatchHead.load(tmp_path / "head")
    np.testing.assert_allclose(
        again.probabilities(val[0][:3], val[1][:3]), head.probabilities(val[0][:3], val[1][:3])
    )
