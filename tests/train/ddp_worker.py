"""Run under ``torchrun --nproc_per_node=2`` by test_distributed.py (not a test module itself).

``grads MODEL_DIR OUT LOSS``: each rank encodes its half of a fixed batch, features are gathered with
gradients, the loss is taken on the global batch and gradients are averaged; rank 0 writes the loss and
the gradients to OUT (safetensors). ``train CONFIG_JSON``: runs ``retrieval.train.train`` on the config.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from safetensors.torch import save_file


def fixed_batch(n: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    captions = [
        f"a {c} shape number {i}" for i, c in enumerate(["red", "green", "blue", "yellow"] * (n // 4))
    ]
    image_ids = ["img0", "img1", "img2", "img0", "img3", "img1", "img4", "img5"][
        :n
    ]  # shared across the halves
    return {
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "captions": captions,
        "image_ids": image_ids,
    }


def half(batch: dict, rank: int, world: int) -> dict:
    n = len(batch["captions"]) // world
    sl = slice(rank * n, (rank + 1) * n)
    return {
        "pixel_values": batch["pixel_values"][sl],
        "captions": batch["captions"][sl],
        "image_ids": batch["image_ids"][sl],
    }


def grads(model_dir: str, out_dir: str, loss_names: str) -> None:
    from retrieval.losses import LOSSES
    from retrieval.model import TwinEncoder
    from retrieval.train.distributed import average_gradients, init_distributed, shutdown
    from retrieval.train.step import batch_loss

    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    for loss_name in loss_names.split(","):
        model = TwinEncoder.load(model_dir, device="cpu")
        model.train()
        batch = half(fixed_batch(), ctx.rank, ctx.world_size)
        loss, n = batch_loss(model, LOSSES[loss_name](), batch, ctx, contextlib.nullcontext())
        loss.backward()
        average_gradients([p for p in model.parameters() if p.requires_grad], ctx)
        if ctx.rank == 0:
            tensors = {
                f"grad.{k}": p.grad.contiguous() for k, p in model.named_parameters() if p.grad is not None
            }
            tensors["loss"] = loss.detach().reshape(1)
            tensors["n"] = torch.tensor([n])
            save_file(tensors, f"{out_dir}/{loss_name}.safetensors")
    shutdown(ctx)


def train(config_json: str) -> None:
    from retrieval.config import TrainConfig
    from retrieval.train import train as run

    torch.set_num_threads(1)
    run(TrainConfig.load(config_json))


if __name__ == "__main__":
    if sys.argv[1] == "grads":
        grads(*sys.argv[2:5])
    else:
        train(sys.argv[2])
