"""Training losses for twin encoders: functions of embeddings, one calling convention.

Every loss is an ``nn.Module`` built with default settings by ``LOSSES[name]()`` and called as::

    loss(image_emb [B, D], text_emb [B, D], logit_scale, logit_bias=None, image_ids=None) -> scalar

Row ``i`` of ``image_emb`` and row ``i`` of ``text_emb`` are a matching pair; both are expected to be
L2-normalised (the towers emit unit vectors). ``logit_scale`` is the logit multiplier *already
exponentiated* (``model.logit_scale.exp()``, as in open_clip); ``logit_bias`` is the additive logit
bias of the sigmoid loss. A loss that uses no scale or bias accepts and ignores them, so the trainer
can swap losses by name. ``image_ids`` ([B] tensor or sequence of hashables, optional) marks rows that
show the same image, ``text_ids`` rows that carry the same text (a tag shared by several images):
image ``i`` and text ``j`` of such rows *match*, so they are never negatives of each other, and every
loss leaves those pairs out; ``ClipLoss(multi_positive=True)`` counts them as positives instead.

================  ===============================================  ====================================
name              loss                                             uses
================  ===============================================  ====================================
``clip``          symmetric InfoNCE (Radford et al. 2021)          ``logit_scale``
``siglip``        pairwise sigmoid (Zhai et al. 2023)              ``logit_scale``, ``logit_bias``
``contrastive``   margin loss on labelled pairs (Hadsell 2006)     margin on Euclidean distance
``triplet``       hardest-negative hinge (VSE++, Faghri 2018)      margin on cosine similarity
================  ===============================================  ====================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSSES",
    "ClipLoss",
    "ContrastiveLoss",
    "SigLipLoss",
    "TripletLoss",
    "UnknownLossError",
    "build_loss",
    "matching_mask",
    "same_image_mask",
]

ImageIds = Tensor | Sequence[Any] | None


def _check_pair(image_emb: Tensor, text_emb: Tensor) -> int:
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            f"losses expect image_emb [B, D] and text_emb [B, D], received shapes "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}: pass one row per pair"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} differ: row i of "
            "both must be a matching pair in the same embedding space"
        )
    return image_emb.shape[0]


def same_image_mask(image_ids: ImageIds, batch: int, device: torch.device | str = "cpu") -> Tensor | None:
    """``[B, B]`` bool, true where rows ``i`` and ``j`` show the same image (diagonal included).

    ``image_ids`` is a ``[B]`` tensor or a sequence of hashables (e.g. the ``image_id`` strings of
    :class:`retrieval.data.Pair`); ``None`` means every row is a different image and gives ``None``.
    """
    if image_ids is None:
        return None
    if isinstance(image_ids, Tensor):
        ids = image_ids.reshape(-1).to(device)  # [B]
    else:
        codes: dict[Any, int] = {}
        ids = torch.tensor([codes.setdefault(x, len(codes)) for x in image_ids], device=device)  # [B]
    if ids.numel() != batch:
        raise ValueError(
            f"image_ids has {ids.numel()} entries, the batch has {batch} rows: give one id per row"
        )
    return ids[:, None] == ids[None, :]  # [B, B]


def matching_mask(
    image_ids: ImageIds, batch: int, device: torch.device | str = "cpu", text_ids: ImageIds = None
) -> Tensor | None:
    """``[B, B]`` bool, true where image row ``i`` and text row ``j`` match: the same image
    (``image_ids``) or the same text (``text_ids``), the diagonal included; None when neither is given."""
    same = same_image_mask(image_ids, batch, device)
    texts = same_image_mask(text_ids, batch, device)
    if texts is None:
        return same
    return texts if same is None else same | texts  # [B, B]


def _negatives_excluded(
    image_ids: ImageIds, batch: int, device: torch.device, text_ids: ImageIds = None
) -> Tensor | None:
    """``[B, B]`` bool, true for off-diagonal matching pairs (neither positive nor negative)."""
    same = matching_mask(image_ids, batch, device, text_ids)
    if same is None:
        return None
    eye = torch.eye(batch, dtype=torch.bool, device=device)  # [B, B]
    return same & ~eye  # [B, B]


class ClipLoss(nn.Module):
    r"""Symmetric InfoNCE over the in-batch similarity matrix (CLIP, Radford et al. 2021).

    With logits :math:`s_{ij} = t \, x_i^\top y_j` (``t = logit_scale``, :math:`x` images,
    :math:`y` texts), the loss is the mean of the image-to-text and text-to-image cross-entropies
    with the diagonal as targets:

    .. math::
        L = \frac{1}{2B}\sum_i \Big[-\log\frac{e^{s_{ii}}}{\sum_j e^{s_{ij}}}
            -\log\frac{e^{s_{ii}}}{\sum_j e^{s_{ji}}}\Big]

    Off-diagonal matching pairs (the same image: ``image_ids``; the same text: ``text_ids``) are
    removed from both softmaxes. With ``multi_positive=True`` they are positives instead: each row's
    target spreads evenly over its matching pairs (UniCL, Yang et al. 2022, "Unified Contrastive
    Learning in Image-Text-Label Space"), with :math:`M` the matching mask (diagonal included),

    .. math::
        L = \frac{1}{2B}\sum_i \Big[-\sum_j \frac{M_{ij}}{\sum_k M_{ik}}
            \log\frac{e^{s_{ij}}}{\sum_k e^{s_{ik}}}
            -\sum_j \frac{M_{ji}}{\sum_k M_{ki}} \log\frac{e^{s_{ji}}}{\sum_k e^{s_{ki}}}\Big]

    so a caption, its image's other captions and its tags all pull toward the image (and a tag
    shared by several images toward each of them). Without matches beyond the diagonal both forms
    are the loss above. Inputs: unit ``image_emb`` / ``text_emb`` [B, D]; uses ``logit_scale`` (a
    float or 0-d tensor, already exponentiated), ignores ``logit_bias``. Relation:
    :class:`SigLipLoss` replaces the softmax by independent binary decisions per pair;
    :class:`TripletLoss` keeps only the hardest negative with a hinge. Minimum 0 (diagonal
    dominating with a large scale); ``log B`` at chance.

    Example::

        >>> x = torch.eye(2)
        >>> round(ClipLoss()(x, x, logit_scale=10.0).item(), 6)
        4.5e-05
    """

    def __init__(self, multi_positive: bool = False) -> None:
        super().__init__()
        self.multi_positive = bool(multi_positive)

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | float = 1.0,
        logit_bias: Tensor | float | None = None,
        image_ids: ImageIds = None,
        text_ids: ImageIds = None,
    ) -> Tensor:
        batch = _check_pair(image_emb, text_emb)
        logits = logit_scale * image_emb @ text_emb.T  # [B, B] image i vs text j
        if self.multi_positive:
            match = matching_mask(image_ids, batch, logits.device, text_ids)
            if match is not None:
                match = match | torch.eye(batch, dtype=torch.bool, device=logits.device)  # [B, B]
                targets = match.to(logits.dtype)  # [B, B]
                i2t = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
                t2i = F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
                return (i2t + t2i) / 2
        excluded = _negatives_excluded(image_ids, batch, logits.device, text_ids)
        if excluded is not None:
            logits = logits.masked_fill(excluded, float("-inf"))  # [B, B]
        targets = torch.arange(batch, device=logits.device)  # [B]
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    def extra_repr(self) -> str:
        return f"multi_positive={self.multi_positive}"


class SigLipLoss(nn.Module):
    r"""Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): every pair is a binary decision.

    With logits :math:`s_{ij} = t \, x_i^\top y_j + b` and labels :math:`z_{ij} = 1` if
    :math:`i = j` else :math:`-1`:

    .. math::
        L = -\frac{1}{B}\sum_{i,j} \log \sigma(z_{ij}\, s_{ij})

    (summed over pairs, divided by the batch size, as in the paper). Off-diagonal pairs of the
    same image are left out of the sum. Inputs: unit embeddings [B, D]; uses ``logit_scale``
    (exponentiated, paper init 10) and ``logit_bias`` (learnable, paper init -10; ``None`` counts
    as 0). Relation: unlike :class:`ClipLoss` there is no softmax over the batch, so no global
    normalisation is needed and the loss scales to large batches; the bias offsets the heavy
    imbalance of B positives against B² - B negatives.

    Example::

        >>> x = torch.eye(2)
        >>> round(SigLipLoss()(x, x, logit_scale=10.0, logit_bias=-5.0).item(), 4)
        0.0134
    """

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | float = 1.0,
        logit_bias: Tensor | float | None = None,
        image_ids: ImageIds = None,
        text_ids: ImageIds = None,
    ) -> Tensor:
        batch = _check_pair(image_emb, text_emb)
        logits = logit_scale * image_emb @ text_emb.T  # [B, B]
        if logit_bias is not None:
            logits = logits + logit_bias  # [B, B]
        eye = torch.eye(batch, dtype=torch.bool, device=logits.device)  # [B, B]
        signs = eye.to(logits.dtype) * 2 - 1  # [B, B] +1 on the diagonal, -1 elsewhere
        per_pair = -F.logsigmoid(signs * logits)  # [B, B]
        excluded = _negatives_excluded(image_ids, batch, logits.device, text_ids)
        if excluded is not None:
            per_pair = per_pair.masked_fill(excluded, 0.0)  # [B, B]
        return per_pair.sum() / batch


class ContrastiveLoss(nn.Module):
    r"""Classic Siamese margin loss on labelled pairs (Hadsell, Chopra & LeCun 2006).

    For a pair at Euclidean distance :math:`d = \lVert x - y \rVert` with label ``1`` (match) or
    ``0`` (non-match):

    .. math::
        \ell = \tfrac12\, y\, d^2 + \tfrac12\, (1 - y)\, \max(0, m - d)^2

    Matches are pulled together; non-matches are pushed apart until they are ``margin`` away.
    The loss is the mean of ``ell`` over the matching pairs plus the mean over the non-matching
    pairs (each group averaged on its own, so the B² - B in-batch negatives do not drown the B
    positives; an empty group adds 0).

    Pairs come from one of two places:

    * ``labels=None`` (the common convention): row ``i`` of both inputs match (label 1) and every
      other image/text combination of the batch is a non-match (label 0), except pairs of the same
      image (``image_ids``), which are left out;
    * ``labels`` [B] of 0/1: row ``i`` of ``image_emb`` and ``text_emb`` is one explicitly given
      pair with that label (e.g. mined or annotated negatives); nothing else is compared.

    Inputs: unit embeddings [B, D] (then :math:`d^2 = 2 - 2\cos` and ``margin`` 1 means
    "non-matches with cosine above 0.5 are too close"). Ignores ``logit_scale``/``logit_bias``.
    Relation: :class:`TripletLoss` compares a negative with its positive instead of an absolute
    margin; :class:`ClipLoss` and :class:`SigLipLoss` replace the margin by a learned temperature.

    Example::

        >>> x = torch.eye(2)
        >>> ContrastiveLoss()(x, x).item()  # aligned pairs, negatives sqrt(2) > margin apart
        0.0
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, received {margin}")
        self.margin = float(margin)

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | float | None = None,
        logit_bias: Tensor | float | None = None,
        image_ids: ImageIds = None,
        labels: Tensor | Sequence[float] | None = None,
        text_ids: ImageIds = None,
    ) -> Tensor:
        batch = _check_pair(image_emb, text_emb)
        if labels is not None:
            y = torch.as_tensor(labels, device=image_emb.device).reshape(-1).to(image_emb.dtype)  # [B]
            if y.numel() != batch:
                raise ValueError(
                    f"labels has {y.numel()} entries, the batch has {batch} rows: one label per row"
                )
            sq = (image_emb - text_emb).pow(2).sum(-1)  # [B] squared distances of the given pairs
            pos_mask, neg_mask = y > 0.5, y <= 0.5  # [B], [B]
        else:
            sq = (
                image_emb.pow(2).sum(-1)[:, None]
                + text_emb.pow(2).sum(-1)[None, :]
                - 2 * image_emb @ text_emb.T
            ).clamp_min(0)  # [B, B]
            eye = torch.eye(batch, dtype=torch.bool, device=image_emb.device)  # [B, B]
            pos_mask = eye
            same = matching_mask(image_ids, batch, image_emb.device, text_ids)
            neg_mask = ~eye if same is None else ~same  # [B, B]
        dist = sq.clamp_min(1e-12).sqrt()  # finite gradient at d = 0
        pos = _masked_mean(sq, pos_mask) / 2
        neg = _masked_mean((self.margin - dist).clamp_min(0).pow(2), neg_mask) / 2
        return pos + neg

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    count = mask.sum()
    if int(count) == 0:
        return values.sum() * 0.0  # keeps the graph (and a zero gradient) when the group is empty
    return (values * mask).sum() / count


class TripletLoss(nn.Module):
    r"""Hinge on the hardest in-batch negative (VSE++, Faghri et al. 2018).

    With cosine similarities :math:`s_{ij} = x_i^\top y_j` (image ``i``, text ``j``):

    .. math::
        L = \frac1B \sum_i \Big[\max_{j \ne i} [\alpha + s_{ij} - s_{ii}]_+
            + \max_{j \ne i} [\alpha + s_{ji} - s_{ii}]_+\Big]

    i.e. for each image the most similar wrong caption, and for each caption the most similar wrong
    image, must stay ``margin`` (:math:`\alpha`) below the true pair. ``max_violation=False`` sums
    over all negatives instead of taking the hardest (VSE0 / Kiros et al. 2014). Pairs of the same
    image are not negatives; a row with no negative (batch of 1) adds 0. Averaged over the batch
    (VSE++ sums; the mean keeps the learning rate independent of the batch size).
    Inputs: unit embeddings [B, D]; ignores ``logit_scale``/``logit_bias``. Relation: a hinge
    counterpart of :class:`ClipLoss` (whose softmax is a smooth maximum over all negatives).

    Example::

        >>> x = torch.eye(2)
        >>> TripletLoss()(x, x).item()  # negatives at cosine 0, 0.2 margin already met
        0.0
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = True) -> None:
        super().__init__()
        self.margin = float(margin)
        self.max_violation = bool(max_violation)

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | float | None = None,
        logit_bias: Tensor | float | None = None,
        image_ids: ImageIds = None,
        text_ids: ImageIds = None,
    ) -> Tensor:
        batch = _check_pair(image_emb, text_emb)
        sim = image_emb @ text_emb.T  # [B, B]
        pos = sim.diagonal()  # [B]
        cost_text = (self.margin + sim - pos[:, None]).clamp_min(0)  # [B, B] image i anchor, text j negative
        cost_image = (self.margin + sim - pos[None, :]).clamp_min(0)  # [B, B] text j anchor, image i negative
        same = matching_mask(image_ids, batch, sim.device, text_ids)
        if same is None:
            same = torch.eye(batch, dtype=torch.bool, device=sim.device)  # [B, B]
        cost_text = cost_text.masked_fill(same, 0.0)
        cost_image = cost_image.masked_fill(same, 0.0)
        if self.max_violation:
            per_row = cost_text.max(dim=1).values + cost_image.max(dim=0).values  # [B]
        else:
            per_row = cost_text.sum(dim=1) + cost_image.sum(dim=0)  # [B]
        return per_row.mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, max_violation={self.max_violation}"


class UnknownLossError(ValueError, KeyError):
    """An unknown loss name; a ``ValueError`` (and a ``KeyError`` for dict-style lookups)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _LossTable(dict):
    def __missing__(self, name: str) -> Any:
        raise UnknownLossError(f"unknown loss {name!r}; choose one of {sorted(self)}")


# name -> loss class; ``LOSSES[name]()`` builds the loss with its default settings.
LOSSES: dict[str, type[nn.Module]] = _LossTable(
    clip=ClipLoss,
    siglip=SigLipLoss,
    contrastive=ContrastiveLoss,
    triplet=TripletLoss,
)


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """``LOSSES[name](**kwargs)``; an unknown name raises ``ValueError`` listing the choices."""
    return LOSSES[name](**kwargs)
