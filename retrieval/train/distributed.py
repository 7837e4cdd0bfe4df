"""Data-parallel training over ``torchrun`` processes: gloo on CPU, nccl on GPU.

Each rank encodes its share of the global batch; :func:`gather_with_grad` concatenates every rank's
features *keeping the autograd graph*, so the loss on each rank sees the whole global batch (the
negatives of all ranks). Its backward sums the gradient of every rank's (identical) loss into the
local features, i.e. ``world_size`` times the true gradient; :func:`average_gradients` then divides
the summed parameter gradients by ``world_size``, which leaves exactly the gradient one process
computes on the combined batch (the scheme of open_clip's ``gather_with_grad``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from retrieval.encoding import pick_device

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size`` processes on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context created the process group (and destroys it at the end)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_preference: str | None = None) -> DistContext:
    """Join the ``torchrun`` job described by ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (if any).

    Without those variables (or with ``WORLD_SIZE=1``) this is a single process. An already
    initialised default process group is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(
            rank, world, local_rank, pick_device(device_preference, local_rank), owns_group=False
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device_preference))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistContext(rank, world, local_rank, device, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group this context created (after every rank got here)."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _AllGather(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum over ranks of the gradient of its own rows."""

    @staticmethod
    def forward(fctx: Any, x: Tensor, rank: int, world_size: int) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        fctx.rank, fctx.rows = rank, x.shape[0]
        return torch.cat(parts)  # [world_size * m, ...]

    @staticmethod
    def backward(fctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        total = grad.contiguous().clone()  # [world_size * m, ...]
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[fctx.rank * fctx.rows : (fctx.rank + 1) * fctx.rows], None, None


def gather_with_grad(x: Tensor, ctx: DistContext) -> Tensor:
    """Concatenate ``x`` [b_r, ...] of every rank in rank order -> [sum b_r, ...], differentiable.

    Ranks may hold different numbers of rows (a broken image dropped from one shard): rows are
    padded to the largest count for the collective and the padding is cut off again.
    """
    if not ctx.enabled:
        return x
    counts = _gather_counts(x.shape[0], ctx, x.device)
    largest = max(counts)
    if x.shape[0] < largest:
        x = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])  # [largest, ...]
    gathered = _AllGather.apply(x, ctx.rank, ctx.world_size)  # [world_size * largest, ...]
    keep = [r * largest + i for r, n in enumerate(counts) for i in range(n)]
    if len(keep) == gathered.shape[0]:
        return gathered
    return gathered[torch.tensor(keep, device=gathered.device)]  # [sum b_r, ...]


def gather_no_grad(x: Tensor, ctx: DistContext) -> Tensor:
    """Like :func:`gather_with_grad` for tensors that need no gradient (ids)."""
    if not ctx.enabled:
        return x
    counts = _gather_counts(x.shape[0], ctx, x.device)
    largest = max(counts)
    if x.shape[0] < largest:
        x = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def _gather_counts(n: int, ctx: DistContext, device: torch.device) -> list[int]:
    local = torch.tensor([n], dtype=torch.long, device=device)
    counts = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(counts, local)
    return [int(c.item()) for c in counts]


def image_id_codes(image_ids: Sequence[str], device: torch.device) -> Tensor:
    """``[B]`` int64 codes of image ids that agree across processes (8-byte BLAKE2b of the id)."""
    codes = [
        int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest(), "little", signed=True)
        for i in image_ids
    ]
    return torch.tensor(codes, dtype=torch.long, device=device)  # [B]


def average_gradients(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """All-reduce (mean over ranks) the gradients of ``params``, in one flat buffer."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # [P]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (identity in a single process)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
