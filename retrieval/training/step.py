"""One optimizer step: micro-batches -> features (gathered over ranks) -> loss -> backward -> update."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from retrieval.training.distributed import (
    DistContext,
    average_gradients,
    gather_no_grad,
    gather_with_grad,
    image_id_codes,
)

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the logit multiplier at 100 to keep training stable


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; the weights of that step were not applied."""


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the step's micro-batches (of the global batch)
    pairs: int  # pairs trained on in this step, all ranks together
    seconds: float  # wall time of the step
    data_seconds: float  # of which waiting for the DataLoader
    grad_norm: float | None  # total gradient norm before clipping (when clipping)
    skipped: int  # broken items dropped from this step's batches (this rank)


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
    (a :class:`~retrieval.training.frozen.FrozenTextFeatures`) replaces a locked text tower, and
    ``image_cache`` a locked image tower (the batch then carries ``"images"`` refs, not pixels)."""
    device = ctx.device
    n_local = len(batch["captions"])
    with autocast:
        if n_local:
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
            image_emb = torch.zeros(0, model.embed_dim, device=device, requires_grad=True)  # [0, D]
            text_emb = torch.zeros(0, model.embed_dim, device=device, requires_grad=True)  # [0, D]
    image_emb, text_emb = image_emb.float(), text_emb.float()
    ids = image_id_codes(batch["image_ids"], device)  # [b]
    image_all = gather_with_grad(image_emb, ctx)  # [B, D] global batch, rank order
    text_all = gather_with_grad(text_emb, ctx)  # [B, D]
    ids_all = gather_no_grad(ids, ctx)  # [B]
    if image_all.shape[0] == 0:
        return None, 0
    scale = model.logit_scale.exp()
    bias = model.logit_bias
    loss = loss_fn(image_all, text_all, scale, bias, image_ids=ids_all)
    return loss, int(image_all.shape[0])


def train_step(run: Any, batches: Iterator[dict[str, Any]], n_micro: int) -> StepResult:
    """Accumulate ``n_micro`` micro-batches from ``batches`` and apply one optimizer update."""
    model, optimizer, scaler, ctx = run.model, run.optimizer, run.scaler, run.ctx
    config = run.config
    start = time.perf_counter()
    data_seconds = 0.0
    optimizer.zero_grad(set_to_none=True)
    losses: list[Tensor] = []
    pairs = skipped = 0
    for _ in range(n_micro):
        t0 = time.perf_counter()
        batch = next(batches)
        data_seconds += time.perf_counter() - t0
        skipped += int(batch.get("skipped", 0))
        autocast = run.precision.autocast(ctx.device)
        loss, n = batch_loss(model, run.loss_fn, batch, ctx, autocast, run.text_cache, run.image_cache)
        if loss is None:
            continue
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"the loss is {loss.item()}")
        scaler.scale(loss / n_micro).backward()
        losses.append(loss.detach())
        pairs += n
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params, ctx)
    grad_norm = None
    if losses:
        scaler.unscale_(optimizer)
        if config.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
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
