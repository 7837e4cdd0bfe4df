"""Several positives per row: captions of one image, tags, a tag shared by several images.

The vectorised losses are checked against dense loops written from the formulas (values and
gradients, float64), on batches with repeated images, repeated texts and both."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.losses import LOSSES, ClipLoss, matching_mask

IMAGES = [0, 1, 0, 2, 3, 1, 4, 5]
TEXTS = ["cat", "dog", "kitten", "animal", "car", "puppy", "animal", "animal"]


def _inputs(b: int = 8, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    return img, txt, scale


def _match(i: int, j: int, image_ids, text_ids) -> bool:
    return (
        i == j
        or (image_ids is not None and image_ids[i] == image_ids[j])
        or (text_ids is not None and text_ids[i] == text_ids[j])
    )


def ref_multi_positive(img, txt, scale, image_ids, text_ids):
    """UniCL's loss by loops: each row's target spread evenly over its matching pairs."""
    b = img.shape[0]
    total = img.sum() * 0
    for i in range(b):  # image i against every text
        logits = [scale * (img[i] * txt[k]).sum() for k in range(b)]
        lse = torch.logsumexp(torch.stack(logits), 0)
        positives = [j for j in range(b) if _match(i, j, image_ids, text_ids)]
        total = total - sum(logits[j] - lse for j in positives) / len(positives)
    for j in range(b):  # text j against every image
        logits = [scale * (img[k] * txt[j]).sum() for k in range(b)]
        lse = torch.logsumexp(torch.stack(logits), 0)
        positives = [i for i in range(b) if _match(i, j, image_ids, text_ids)]
        total = total - sum(logits[i] - lse for i in positives) / len(positives)
    return total / (2 * b)


def ref_excluded(img, txt, scale, image_ids, text_ids):
    """The plain CLIP loss by loops, matching off-diagonal pairs left out of both softmaxes."""
    b = img.shape[0]
    total = img.sum() * 0
    for i in range(b):
        kept = [k for k in range(b) if k == i or not _match(i, k, image_ids, text_ids)]
        row = torch.stack([scale * (img[i] * txt[k]).sum() for k in kept])
        col = torch.stack([scale * (img[k] * txt[i]).sum() for k in kept])
        at = kept.index(i)
        total = total - (row[at] - torch.logsumexp(row, 0)) - (col[at] - torch.logsumexp(col, 0))
    return total / (2 * b)


def _value_and_grads(fn, img, txt, scale):
    out = fn(img, txt, scale)
    return out.detach(), torch.autograd.grad(out, [img, txt, scale])


CASES = {
    "distinct": (None, None),
    "images": (IMAGES, None),
    "texts": (None, TEXTS),
    "both": (IMAGES, TEXTS),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("multi", [True, False], ids=["multi-positive", "excluded"])
def test_clip_matches_the_dense_reference(case, multi):
    image_ids, text_ids = CASES[case]
    img, txt, scale = _inputs()
    loss = ClipLoss(multi_positive=multi)
    reference = ref_multi_positive if multi else ref_excluded
    got, got_grads = _value_and_grads(
        lambda i, t, s: loss(i, t, s, image_ids=image_ids, text_ids=text_ids), img, txt, scale
    )
    want, want_grads = _value_and_grads(
        lambda i, t, s: reference(i, t, s, image_ids, text_ids), img, txt, scale
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_fuzzed_batches_match_the_reference(seed):
    """Random batch sizes and random repetitions of images and texts (every size from 1 up)."""
    rng = torch.Generator().manual_seed(100 + seed)
    b = int(torch.randint(1, 12, (1,), generator=rng))
    image_ids = torch.randint(0, max(1, b // 2), (b,), generator=rng).tolist()
    text_ids = [f"t{x}" for x in torch.randint(0, max(1, b - 1), (b,), generator=rng).tolist()]
    img, txt, scale = _inputs(b, 4, seed)
    for multi, reference in ((True, ref_multi_positive), (False, ref_excluded)):
        got = ClipLoss(multi_positive=multi)(img, txt, scale, image_ids=image_ids, text_ids=text_ids)
        want = reference(img, txt, scale, image_ids, text_ids)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_without_repeats_both_forms_are_the_plain_clip_loss():
    img, txt, scale = _inputs()
    plain = ClipLoss()(img, txt, scale)
    assert torch.allclose(ClipLoss(multi_positive=True)(img, txt, scale, image_ids=list(range(8))), plain)
    assert torch.allclose(ClipLoss(multi_positive=True)(img, txt, scale), plain)


def test_a_shared_tag_pulls_toward_every_image_it_names():
    """Two images tagged alike: the tag row's best score is reached by matching both images, which
    only the multi-positive form rewards."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    both = F.normalize(torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64), dim=-1)
    one = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tags = ["animal", "animal"]
    multi = ClipLoss(multi_positive=True)
    assert multi(img, both, 10.0, text_ids=tags) < multi(img, one, 10.0, text_ids=tags)
    assert math.isclose(float(multi(img, both, 10.0, text_ids=tags)), math.log(2), rel_tol=1e-9)


@pytest.mark.parametrize("name", ["siglip", "contrastive", "triplet"])
def test_other_losses_leave_rows_of_one_text_out_as_negatives(name):
    """A tag shared by images 0 and 1: their cross pairs are matches, never negatives, so moving the
    text of row 1 toward image 0 must not raise the loss as a negative would."""
    img, txt, scale = _inputs(4, 3, 1)
    loss = LOSSES[name]()
    texts = ["animal", "animal", "car", "bus"]
    base = loss(img, txt, scale, -1.0, text_ids=texts)
    moved = txt.detach().clone()
    moved[1] = img.detach()[0]
    moved_plain = loss(img, moved, scale, -1.0)  # the same texts, counted as negatives
    moved_tagged = loss(img, moved, scale, -1.0, text_ids=texts)
    assert moved_tagged < moved_plain
    assert torch.isfinite(base)


def test_matching_mask_unions_images_and_texts():
    mask = matching_mask([0, 0, 1], 3, "cpu", ["a", "b", "b"])
    assert mask.tolist() == [[True, True, False], [True, True, True], [False, True, True]]
    assert matching_mask(None, 3, "cpu", None) is None
