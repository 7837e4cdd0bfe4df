"""The four losses against slow, obvious loop references (values and gradients), plus their limits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval.losses import (
    LOSSES,
    ClipLoss,
    ContrastiveLoss,
    SigLipLoss,
    TripletLoss,
    UnknownLossError,
    build_loss,
    same_image_mask,
)

# ---------------------------------------------------------------- loop references


def _negative(ids, i, j) -> bool:
    """Pair (image i, text j) is a negative: different rows of different images."""
    if i == j:
        return False
    return ids is None or ids[i] != ids[j]


def ref_clip(img, txt, scale, bias=None, ids=None):
    b = img.shape[0]
    total = 0.0
    for i in range(b):  # image -> text
        pos = scale * torch.dot(img[i], txt[i])
        terms = [pos] + [scale * torch.dot(img[i], txt[j]) for j in range(b) if _negative(ids, i, j)]
        total = total - (pos - torch.logsumexp(torch.stack(terms), 0))
    for j in range(b):  # text -> image
        pos = scale * torch.dot(img[j], txt[j])
        terms = [pos] + [scale * torch.dot(img[i], txt[j]) for i in range(b) if _negative(ids, i, j)]
        total = total - (pos - torch.logsumexp(torch.stack(terms), 0))
    return total / (2 * b)


def ref_siglip(img, txt, scale, bias=None, ids=None):
    b = img.shape[0]
    bias = 0.0 if bias is None else bias
    total = 0.0
    for i in range(b):
        for j in range(b):
            logit = scale * torch.dot(img[i], txt[j]) + bias
            if i == j:
                total = total - F.logsigmoid(logit)
            elif _negative(ids, i, j):
                total = total - F.logsigmoid(-logit)
    return total / b


def ref_contrastive(img, txt, scale=None, bias=None, ids=None, margin=1.0, labels=None):
    b = img.shape[0]
    pos, neg = [], []
    if labels is not None:
        for i in range(b):
            d = torch.linalg.vector_norm(img[i] - txt[i])
            (pos if labels[i] == 1 else neg).append((i, i, d))
    else:
        for i in range(b):
            for j in range(b):
                d = torch.linalg.vector_norm(img[i] - txt[j])
                if i == j:
                    pos.append((i, j, d))
                elif _negative(ids, i, j):
                    neg.append((i, j, d))
    total = 0.0
    if pos:
        total = total + sum(0.5 * d**2 for _, _, d in pos) / len(pos)
    if neg:
        total = total + sum(0.5 * torch.clamp(margin - d, min=0) ** 2 for _, _, d in neg) / len(neg)
    return total


def ref_triplet(img, txt, scale=None, bias=None, ids=None, margin=0.2):
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        s_ii = torch.dot(img[i], txt[i])
        costs_t = [
            torch.clamp(margin + torch.dot(img[i], txt[j]) - s_ii, min=0)
            for j in range(b)
            if _negative(ids, i, j)
        ]
        costs_i = [
            torch.clamp(margin + torch.dot(img[j], txt[i]) - s_ii, min=0)
            for j in range(b)
            if _negative(ids, j, i)
        ]
        if costs_t:
            total = total + max(costs_t, key=lambda c: float(c.detach()))
        if costs_i:
            total = total + max(costs_i, key=lambda c: float(c.detach()))
    return total / b


REFERENCES = {"clip": ref_clip, "siglip": ref_siglip, "contrastive": ref_contrastive, "triplet": ref_triplet}


def _inputs(b: int = 6, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    return img, txt, scale, bias


def _value_and_grads(fn, img, txt, scale, bias, ids):
    tensors = [img, txt, scale, bias]
    out = fn(img, txt, scale, bias, ids)
    grads = torch.autograd.grad(out, tensors, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("ids", [None, [0, 1, 0, 2, 3, 1]], ids=["distinct", "shared-images"])
def test_matches_loop_reference_values_and_gradients(name, ids):
    img, txt, scale, bias = _inputs()
    loss = LOSSES[name]()
    got, got_grads = _value_and_grads(lambda *a: loss(*a[:4], image_ids=a[4]), img, txt, scale, bias, ids)
    want, want_grads = _value_and_grads(REFERENCES[name], img, txt, scale, bias, ids)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_contrastive_explicit_labels_match_reference():
    img, txt, scale, bias = _inputs()
    labels = [1, 0, 1, 1, 0, 0]
    loss = ContrastiveLoss(margin=1.3)
    got, got_grads = _value_and_grads(lambda *a: loss(*a[:2], labels=labels), img, txt, scale, bias, None)
    want, want_grads = _value_and_grads(
        lambda i, t, *_: ref_contrastive(i, t, margin=1.3, labels=labels), img, txt, scale, bias, None
    )
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_triplet_sum_of_violations_variant():
    img, txt, *_ = _inputs()
    sim = (img @ txt.T).detach()
    pos = sim.diagonal()
    want = (
        sum(
            max(0.0, 0.2 + float(sim[i, j]) - float(pos[i]))
            + max(0.0, 0.2 + float(sim[j, i]) - float(pos[i]))
            for i in range(6)
            for j in range(6)
            if i != j
        )
        / 6
    )
    assert TripletLoss(max_violation=False)(img, txt).item() == pytest.approx(want)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_aligned_embeddings_give_the_minimum(name):
    b = 4
    aligned = torch.eye(b, 8, dtype=torch.float64)  # orthonormal, image i == text i
    scale, bias = torch.tensor(50.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    loss = LOSSES[name]()
    best = loss(aligned, aligned, scale, bias).item()
    assert best == pytest.approx(0.0, abs=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = F.normalize(aligned + 0.3 * torch.randn(b, 8, generator=g, dtype=torch.float64), dim=-1)
        assert loss(aligned, other, scale, bias).item() >= best  # margin losses: 0 inside the margin
        shuffled = aligned[torch.tensor([1, 0, 3, 2])]
        assert loss(aligned, shuffled, scale, bias).item() > best


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_batch_of_one(name):
    img = F.normalize(torch.randn(1, 4), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(1, 4), dim=-1)
    out = LOSSES[name]()(img, txt, torch.tensor(5.0), torch.tensor(-2.0), image_ids=["a"])
    assert out.shape == () and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(img.grad).all()
    if name == "clip":  # a softmax over one candidate: always right
        assert out.item() == pytest.approx(0.0, abs=1e-6)
    if name == "triplet":  # no negative to violate the margin
        assert out.item() == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_same_image_captions_are_not_negatives(name):
    # Rows 0 and 1 are two captions of one image: their texts are identical, which would be a hard
    # "negative" for each other unless masked. With the mask the loss equals the loss of a batch in
    # which that confusing pair never meets.
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=-1)
    img[1] = img[0]
    txt = img.clone()
    loss = LOSSES[name]()
    masked = loss(img, txt, 10.0, -3.0, image_ids=["x", "x", "y"])
    unmasked = loss(img, txt, 10.0, -3.0)
    assert masked.item() < unmasked.item()
    ids_tensor = loss(img, txt, 10.0, -3.0, image_ids=torch.tensor([7, 7, 9]))
    torch.testing.assert_close(masked, ids_tensor)


def test_scale_and_bias_are_ignored_where_unused():
    img, txt, *_ = _inputs()
    for name in ("contrastive", "triplet"):
        loss = LOSSES[name]()
        torch.testing.assert_close(loss(img, txt, 1.0, None), loss(img, txt, 100.0, 5.0))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown loss 'infonce'.*clip.*contrastive.*siglip.*triplet"):
        LOSSES["infonce"]
    with pytest.raises(KeyError):
        build_loss("nope")
    with pytest.raises(UnknownLossError):
        build_loss("nope")


def test_shape_errors_are_readable():
    with pytest.raises(ValueError, match="differ"):
        ClipLoss()(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        SigLipLoss()(torch.randn(4), torch.randn(4), 1.0)
    with pytest.raises(ValueError, match="one id per row"):
        TripletLoss()(torch.randn(3, 4), torch.randn(3, 4), image_ids=[1, 2])


def test_same_image_mask():
    mask = same_image_mask(["a", "b", "a"], 3)
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert same_image_mask(None, 3) is None


def test_losses_are_modules_with_defaults():
    assert isinstance(LOSSES["clip"](), torch.nn.Module)
    assert ContrastiveLoss().margin == 1.0 and TripletLoss().margin == 0.2
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=0)
    assert list(SigLipLoss().parameters()) == []


def test_docstring_examples():
    import doctest

    import retrieval.losses

    result = doctest.testmod(retrieval.losses, extraglobs={"torch": torch})
    assert result.attempted >= 4 and result.failed == 0
