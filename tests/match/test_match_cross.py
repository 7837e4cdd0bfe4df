"""The cross-attention match head: loss and gradients against a per-pair reference, the padding mask,
its start, training, re-ranking, save/load, and the features it reads from a real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.config import CrossMatchConfig
from retrieval.evaluate import ranking_metrics, retrieval_rankings_from_embeddings
from retrieval.evaluate.rerank_eval import cross_rerank_metrics
from retrieval.match import MatchHead, match_loss
from retrieval.match_cross import (
    CrossFeatures,
    CrossMatchHead,
    cross_features,
    cross_rerank,
    fit_cross_match_head,
    load_match_head,
)
from retrieval.model import build_model

from support.tiny import CAPTIONS, tiny_config


def _head(seed: int = 0, layers: int = 2) -> CrossMatchHead:
    torch.manual_seed(seed)
    head = CrossMatchHead(grid_dim=6, token_dim=5, width=8, layers=layers, heads=2, hidden=7)
    torch.nn.init.normal_(head.mlp[2].weight)  # not the zero init, so the attention path matters
    head.temperature.fill_(1.3)
    return head.eval()


def _batch(b: int = 5, n: int = 4, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(b, n, 6, generator=g)
    tokens = torch.randn(b, length, 5, generator=g)
    lengths = torch.tensor([length, 1, 3, length - 1, 2][:b])
    mask = torch.arange(length)[None] < lengths[:, None]  # [b, L]
    cos = torch.rand(b, generator=g) * 2 - 1
    return grid, tokens, mask, cos


def _slow_logit(
    head: CrossMatchHead, grid: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor
) -> torch.Tensor:
    """One pair, its real tokens only, multi-head attention written out (scaled dot product per head)."""
    g, t = head.grid_in(grid), head.token_in(tokens)  # [N, W], [l, W]
    for block in head.blocks:
        q, kv = block.norm_q(t), block.norm_kv(g)
        attn = block.attention
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        big_q, big_k, big_v = q @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
        d = head.width // head.heads
        outs = []
        for h in range(head.heads):
            part = slice(h * d, (h + 1) * d)
            weights = torch.softmax(big_q[:, part] @ big_k[:, part].T / math.sqrt(d), dim=-1)  # [l, N]
            outs.append(weights @ big_v[:, part])
        t = t + torch.cat(outs, -1) @ attn.out_proj.weight.T + attn.out_proj.bias
        t = t + block.ff(block.norm_ff(t))
    z = head.norm(t).mean(0)  # [W]
    return (head.scale * cos + head.bias + head.mlp(z)[0]) / head.temperature


def test_loss_and_gradients_match_a_per_pair_reference():
    head = _head()
    grid, tokens, mask, cos = _batch()
    labels = torch.tensor([1, 0, 1, 0, 0.0])
    loss = match_loss(head(grid, tokens, mask, cos), labels)
    params = [p for p in head.parameters()]
    fast = torch.autograd.grad(loss, params)
    terms = []
    for i in range(len(labels)):
        z = _slow_logit(head, grid[i], tokens[i][mask[i]], cos[i])
        terms.append(
            -(
                labels[i] * torch.nn.functional.logsigmoid(z)
                + (1 - labels[i]) * torch.nn.functional.logsigmoid(-z)
            )
        )
    slow = torch.stack(terms).mean()
    reference = torch.autograd.grad(slow, params)
    assert loss.item() == pytest.approx(slow.item(), rel=1e-5)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_padding_tokens_do_not_change_the_logit():
    head = _head(layers=2)
    grid, tokens, mask, cos = _batch()  # [5, 6] tokens, 1 to 6 of them real
    garbage = 100 * torch.randn(5, 9, 5, generator=torch.Generator().manual_seed(1))
    other = torch.cat([torch.where(mask[..., None], tokens, garbage[:, :6]), garbage[:, 6:]], 1)  # [5, 9, 5]
    longer_mask = torch.cat([mask, torch.zeros(5, 3, dtype=torch.bool)], 1)  # 3 more padded positions
    with torch.no_grad():
        torch.testing.assert_close(head(grid, other, longer_mask, cos), head(grid, tokens, mask, cos))


def test_a_fresh_head_is_logistic_in_the_cosine():
    head = CrossMatchHead(6, 5, width=8, heads=2)
    grid, tokens, mask, cos = _batch()
    torch.testing.assert_close(head(grid, tokens, mask, cos), 10.0 * cos - 5.0)
    with pytest.raises(ValueError, match=r"grid \[B, N, 6\] and tokens \[B, L, 5\]"):
        head(grid[..., :4], tokens, mask, cos)


def _toy(seed: int, n_images: int = 24) -> CrossFeatures:
    """Images of 3 cells; caption tokens copy the cells of their image in a random order, plus noise.
    The unit vectors are only weakly informative, so the grid and tokens carry the match."""
    rng = np.random.default_rng(seed)
    cells = rng.standard_normal((n_images, 3, 6)).astype(np.float32)
    g = np.repeat(np.arange(n_images), 2)
    tokens = np.stack([cells[i][rng.permutation(3)] for i in g]) + 0.1 * rng.standard_normal((len(g), 3, 6))
    mask = np.ones((len(g), 4), dtype=bool)
    mask[::3, 3] = False
    padded = np.concatenate([tokens, np.zeros((len(g), 1, 6))], 1).astype(np.float32)
    u = rng.standard_normal((n_images, 8))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = u[g] + 1.5 * rng.standard_normal((len(g), 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    captions = [f"caption {t}" for t in range(len(g))]
    return CrossFeatures(
        torch.from_numpy(cells), torch.from_numpy(padded), torch.from_numpy(mask),
        u.astype(np.float32), v.astype(np.float32), captions, g,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted():
    config = CrossMatchConfig(
        width=16, heads=2, hidden=16, epochs=40, pool=8, negatives=3, batch_size=32, lr=5e-3
    )
    return fit_cross_match_head(_toy(1), config, val=_toy(2, 16), device="cpu")


def test_training_separates_matches_and_calibrates(fitted):
    assert fitted.losses[-1] < 0.5 * fitted.losses[0]
    assert fitted.temperature != 1.0 and fitted.val_ece is not None and fitted.val_ece < 0.15
    val = _toy(2, 16)
    rows = np.arange(len(val.captions))
    p_pos = fitted.head.probabilities(*val.pairs(val.text_to_image, rows))
    p_neg = fitted.head.probabilities(*val.pairs((val.text_to_image + 5) % 16, rows))
    assert p_pos.mean() > p_neg.mean() + 0.3


def test_reranking_reorders_and_keeps_the_candidates(fitted):
    val = _toy(2, 16)
    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(16)[:5] for _ in val.captions])
    top[0, 3:] = -1  # padding stays last
    rows, probs = cross_rerank(fitted.head, val, top, query_is_text=True)
    for before, after in zip(top, rows):
        assert sorted(before.tolist()) == sorted(after.tolist())
    assert (np.diff(probs[:, :3], axis=1) <= 0).all() and (rows[0, 3:] == -1).all()
    texts, images = torch.from_numpy(val.text_vecs), torch.from_numpy(val.image_vecs)
    t2i, i2t = retrieval_rankings_from_embeddings(texts, images, val.text_to_image)
    metrics, _ = cross_rerank_metrics(fitted.head, val, t2i, i2t, (1, 5), n=5)
    dense = {**ranking_metrics(t2i, (5,), "t2i/"), **ranking_metrics(i2t, (5,), "i2t/")}
    assert metrics["rerank/t2i/R@5"] == pytest.approx(dense["t2i/R@5"])  # the same top 5, reordered
    assert metrics["rerank/i2t/R@5"] == pytest.approx(dense["i2t/R@5"])
    assert metrics["rerank/ms_per_query"] > 0 and 0 <= metrics["match/ECE"] <= 1


def test_save_load_round_trip_and_kinds(fitted, tmp_path):
    val = _toy(2, 16)
    args = val.pairs(np.arange(16), np.arange(16))
    fitted.head.save(tmp_path / "cross")
    again = load_match_head(tmp_path / "cross")
    assert isinstance(again, CrossMatchHead)
    np.testing.assert_allclose(again.probabilities(*args), fitted.head.probabilities(*args), rtol=1e-6)
    with pytest.raises(ValueError, match="holds a 'cross' match head"):
        MatchHead.load(tmp_path / "cross")
    MatchHead(4).save(tmp_path / "pooled")
    assert isinstance(load_match_head(tmp_path / "pooled"), MatchHead)


def test_features_of_a_real_model():
    torch.manual_seed(0)
    model = build_model(tiny_config("cnn", "gru"), CAPTIONS, device="cpu").eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)) for _ in range(3)]
    g = np.array([0, 1, 2, 0, 1])
    features = cross_features(model, images, CAPTIONS, g)
    tokens = model.tokenize(CAPTIONS)
    assert features.grid.shape == (3, 64, model.image_tower.output_dim)
    assert torch.equal(features.mask, tokens["attention_mask"].bool())
    assert features.tokens.shape == (5, tokens["input_ids"].shape[1], model.text_tower.output_dim)
    assert (features.tokens[~features.mask] == 0).all()
    np.testing.assert_allclose(features.text_vecs, model.encode_texts(CAPTIONS).numpy(), atol=1e-6)
    pixels = torch.stack([model.image_transform()(im) for im in images])
    with torch.no_grad():
        torch.testing.assert_close(features.grid, model.image_grid(pixels))
    head = CrossMatchHead(features.grid.shape[2], features.tokens.shape[2], width=8, heads=2)
    probs = head.probabilities(*features.pairs(g, np.arange(5)))
    assert probs.shape == (5,) and ((probs > 0) & (probs < 1)).all()
