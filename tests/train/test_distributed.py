"""Data parallelism: two gloo processes on loopback see the same loss and gradients as one process
with the combined batch (features are gathered with their gradients)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retrieval.losses import LOSSES
from retrieval.model import TwinEncoder, build_model
from retrieval.train import train
from retrieval.train.distributed import DistContext
from retrieval.train.step import batch_loss

WORKER = Path(__file__).with_name("ddp_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun(*args: str, timeout: float = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _single_process(
    model_dir: Path, loss_name: str, batch: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = TwinEncoder.load(model_dir, device="cpu")
    model.train()
    loss, _ = batch_loss(model, LOSSES[loss_name](), batch, DistContext(), contextlib.nullcontext())
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def test_two_processes_match_one_process_on_the_combined_batch(tmp_path, tiny_model):
    worker = _worker_module()
    batch = worker.fixed_batch()
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    build_model(tiny_model.replace(use_bias=True), captions=batch["captions"], device="cpu").save(model_dir)
    names = sorted(LOSSES)
    _torchrun("grads", str(model_dir), str(tmp_path), ",".join(names))
    for loss_name in names:
        got = load_file(str(tmp_path / f"{loss_name}.safetensors"))
        want_loss, want_grads = _single_process(model_dir, loss_name, batch)
        assert int(got["n"]) == 8  # the loss saw the global batch
        torch.testing.assert_close(got["loss"][0], want_loss, rtol=1e-5, atol=1e-6)
        got_grads = {k.removeprefix("grad."): v for k, v in got.items() if k.startswith("grad.")}
        assert set(want_grads) <= set(got_grads)
        for name in set(got_grads) - set(want_grads):  # unused by this loss (the bias under clip): zero
            assert not got_grads[name].any(), name
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2], ids=["per-step", "feature-accumulation"])
def test_torchrun_training_matches_single_process_training(config, tmp_path, accum):
    base = config.replace(val_data=None, max_steps=3, optimizer="sgd", checkpoint_every=0, warmup_steps=0)
    single = train(base.replace(out_dir=str(tmp_path / "single"), batch_size=8))
    # 2 processes x 4 pairs (or x 2 micro-batches of 2 pairs, features accumulated) = the same batch of 8
    two = base.replace(
        out_dir=str(tmp_path / "two"), batch_size=4 // accum, grad_accum=accum, accum_features=True
    )
    two.save(tmp_path / "two.json")
    _torchrun("train", str(tmp_path / "two.json"))
    a = load_file(str(single.run_dir / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_torchrun_fine_tuning_from_a_pretrained_checkpoint_matches_one_process(config, tmp_path):
    from retrieval.config import ModelConfig

    from support.hf import save_tiny_clip

    words = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "cross", "in")
    clip = save_tiny_clip(tmp_path / "clip", texts=[f"a {w}" for w in words])
    base = config.replace(
        init_model=str(clip),
        model=ModelConfig(lock_text=False, unfreeze_image_layers=1),
        val_data=None,
        max_steps=2,
        optimizer="sgd",
        checkpoint_every=0,
        warmup_steps=0,
    )
    single = train(base.replace(out_dir=str(tmp_path / "single"), batch_size=8))
    two = base.replace(out_dir=str(tmp_path / "two"), batch_size=4)
    two.save(tmp_path / "two.json")
    _torchrun("train", str(tmp_path / "two.json"))
    a = load_file(str(single.run_dir / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
