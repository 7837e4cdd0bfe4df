"""One optimizer step: micro-batches -> features (gathered over ranks) -> loss -> backward -> update."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from retrieval.train.distributed import (
    DistContext,
    average_gradients,
    gather_no_grad,
    gather_with_grad,
    image_id_codes,
)
from retrieval.train.setup import Precision

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the logit multiplier at 100 to keep training stable


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; the weights of that step were not applied."""


@dataclasses.dataclass(frozen=True)
class StepParts:
    """What every optimizer step of a run works with (built once, after the data is prepared)."""

    model: nn.Module  # the TwinEncoder being trained (on ctx.device, in train mode)
    loss_fn: nn.Module  # a retrieval.losses loss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # loss scaling (enabled for fp16 only)
    ctx: DistContext  # this process's rank, world size and device
    precision: Precision  # the autocast policy
    clip_grad_norm: float | None = None  # clip the global gradient norm to this
    accum_features: bool = False  # with several micro-batches: contrast against the whole step's batch
    text_cache: Any = None  # FrozenTextFeatures replacing a locked text tower (retrieval.train.frozen)
    image_cache: Any = None  # FrozenImageFeatures replacing a locked image tower


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the step's micro-batches (of the global batch)
    pairs: int  # pairs trained on in this step, all ranks together
    seconds: float  # wall time of the step
    data_seconds: float  # of which waiting for the DataLoader
    grad_norm: float | None  # total gradient norm before clipping (when clipping)
    skipped: int  # broken items dropped from this step's batches (this rank)


def local_features(
    model: nn.Module,
    batch: dict[str, Any],
    ctx: DistContext,
    autocast: Any,
    text_cache: Any = None,
    image_cache: Any = None,
) -> tuple[Tensor, Tensor]:
    """This rank's ``(image_emb [b, D], text_emb [b, D])`` float32 for one micro-batch."""
    device = ctx.device
    with autocast:
        if len(batch["captions"]):
            if image_cache is not None:
                image_emb = image_cache(model, batch["images"])  # [b, D]
            else:
                pixel_values = batch["pixel_values"].to(device, non_blocking=True)  # [b, 3, H, W]
                image_emb = model.image_features(pixel_values)  # [b, D]
            if text_cache is not None:
                text_emb = text_cache(model, batch["captions"])  # [b, D]
            else:
                captions = batch["captions"]
                tokens = {k: v.to(device, non_blocking=True) for k, v in model.tokenize(captions).items()}
                text_emb = model.text_features(tokens)  # [b, D]
        else:  # every item of this shard was broken: take part in the collectives with no rows
            grad = torch.is_grad_enabled()
            image_emb = torch.zeros(0, model.embed_dim, device=device, requires_grad=grad)  # [0, D]
            text_emb = torch.zeros(0, model.embed_dim, device=device, requires_grad=grad)  # [0, D]
    return image_emb.float(), text_emb.float()


def global_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    image_emb: Tensor,
    text_emb: Tensor,
    image_ids: list[str],
    ctx: DistContext,
    detach_scale: bool = False,
    captions: list[str] | None = None,
) -> tuple[Tensor | None, int]:
    """The loss over every rank's rows (features gathered with their gradients); ``(None, 0)`` when
    the global batch is empty. ``detach_scale`` keeps the logit scale/bias out of the gradient.
    Rows of one image, and rows of one caption text (a tag naming several images), match: the loss
    never takes them for negatives of each other."""
    ids = image_id_codes(image_ids, ctx.device)  # [b]
    image_all = gather_with_grad(image_emb, ctx)  # [B, D] global batch, rank order
    text_all = gather_with_grad(text_emb, ctx)  # [B, D]
    ids_all = gather_no_grad(ids, ctx)  # [B]
    texts_all = gather_no_grad(image_id_codes(captions, ctx.device), ctx) if captions is not None else None
    if image_all.shape[0] == 0:
        return None, 0
    scale = model.logit_scale.exp()
    bias = model.logit_bias
    if detach_scale:
        scale = scale.detach()
        bias = bias.detach() if bias is not None else None
    loss = loss_fn(image_all, text_all, scale, bias, image_ids=ids_all, text_ids=texts_all)
    return loss, int(image_all.shape[0])


def batch_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    batch: dict[str, Any],
    ctx: DistContext,
    autocast: Any,
    text_cache: Any = None,
    image_cache: Any = None,
) -> tuple[Tensor | None, int]:
    """Loss of one micro-batch over the global batch (features of all ranks); ``(None, 0)`` when the
    global batch is empty. Differentiable with respect to this rank's parameters. ``text_cache``
    (a :class:`~retrieval.train.frozen.FrozenTextFeatures`) replaces a locked text tower, and
    ``image_cache`` a locked image tower (the batch then carries ``"images"`` refs, not pixels)."""
    image_emb, text_emb = local_features(model, batch, ctx, autocast, text_cache, image_cache)
    return global_loss(
        model, loss_fn, image_emb, text_emb, batch["image_ids"], ctx, captions=batch["captions"]
    )


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _check(loss: Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"the loss is {loss.item()}")


def _accumulate(parts: StepParts, micro: list[dict[str, Any]]) -> tuple[list[Tensor], int]:
    """Backward of the step's micro-batches; returns the losses and the pairs trained on.

    Default: each micro-batch is its own contrastive batch and the gradients are averaged. With
    ``parts.accum_features`` every micro-batch is contrasted with the whole step's batch, as if it
    were one batch (the gradient cache of Gao et al. 2021, open_clip's ``accum_freq``): features of
    all micro-batches are first computed without gradient; then each micro-batch is encoded again
    with gradient (same dropout, RNG replayed) and the loss of the full batch, in which only its
    rows carry gradient, is backpropagated. The logit scale/bias take their gradient once.
    """
    model, ctx, scaler, loss_fn = parts.model, parts.ctx, parts.scaler, parts.loss_fn
    autocast = parts.precision.autocast(ctx.device)
    caches = (parts.text_cache, parts.image_cache)
    if not parts.accum_features or len(micro) == 1:
        losses, pairs = [], 0
        for batch in micro:
            loss, n = batch_loss(model, loss_fn, batch, ctx, autocast, *caches)
            if loss is None:
                continue
            _check(loss)
            scaler.scale(loss / len(micro)).backward()
            losses.append(loss.detach())
            pairs += n
        return losses, pairs
    states, cached = [], []
    with torch.no_grad():
        for batch in micro:
            states.append(_rng_state(ctx.device))
            cached.append(local_features(model, batch, ctx, autocast, *caches))
    image_ids = [i for batch in micro for i in batch["image_ids"]]
    captions = [c for batch in micro for c in batch["captions"]]
    losses, pairs = [], 0
    for j, batch in enumerate(micro):
        _set_rng_state(states[j], ctx.device)
        fresh = local_features(model, batch, ctx, autocast, *caches)
        image_emb = torch.cat([fresh[0] if k == j else c[0] for k, c in enumerate(cached)])  # [b_total, D]
        text_emb = torch.cat([fresh[1] if k == j else c[1] for k, c in enumerate(cached)])  # [b_total, D]
        loss, n = global_loss(
            model, loss_fn, image_emb, text_emb, image_ids, ctx, detach_scale=j > 0, captions=captions
        )
        if loss is None:
            return [], 0
        _check(loss)
        scaler.scale(loss).backward()
        losses, pairs = [loss.detach()], n
    return losses, pairs


def train_step(parts: StepParts, batches: Iterator[dict[str, Any]], n_micro: int) -> StepResult:
    """Accumulate ``n_micro`` micro-batches from ``batches`` and apply one optimizer update."""
    model, optimizer, scaler, ctx = parts.model, parts.optimizer, parts.scaler, parts.ctx
    start = time.perf_counter()
    data_seconds = 0.0
    optimizer.zero_grad(set_to_none=True)
    micro = []
    for _ in range(n_micro):
        t0 = time.perf_counter()
        micro.append(next(batches))
        data_seconds += time.perf_counter() - t0
    skipped = sum(int(batch.get("skipped", 0)) for batch in micro)
    losses, pairs = _accumulate(parts, micro)
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params, ctx)
    grad_norm = None
    if losses:
        scaler.unscale_(optimizer)
        if parts.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, parts.clip_grad_norm)
            grad_norm = float(norm)
            if not scaler.is_enabled() and not torch.isfinite(norm):
                raise TrainingDivergedError(f"the gradient norm is {grad_norm}")
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            model.logit_scale.clamp_(0, torch.log(torch.tensor(MAX_LOGIT_SCALE)).item())
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return StepResult(
        loss=mean_loss,
        pairs=pairs,
        seconds=time.perf_counter() - start,
        data_seconds=data_seconds,
        grad_norm=grad_norm,
        skipped=skipped,
    )
