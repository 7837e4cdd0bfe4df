"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder ``checkpoints/step-00000123/`` holding

* ``model/``                   the model as :meth:`TwinEncoder.save` writes it (loadable by ``TwinEncoder.load``)
* ``optimizer.safetensors``    optimizer state tensors, keyed ``"<param index>.<name>"``
* ``rng.safetensors``          torch CPU (and CUDA) generator states
* ``state.json``               the loop's :class:`~retrieval.train.state.LoopState` (step, epoch, position,
                               best metric, patience), optimizer hyper-parameters and scalar state,
                               grad-scaler state, Python and NumPy generator states

It is written to a temporary folder and swapped into place (:func:`retrieval.io.staged_directory`);
``checkpoints/latest.json`` then points at it (atomically), and older step folders beyond ``keep``
are removed. A crash at any point leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from retrieval.io import atomic_write_text, settle_file, staged_directory
from retrieval.train.state import LoopState

LATEST = "latest.json"


def _optimizer_to_safe(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            name = f"{pid}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_safe(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    root: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    scaler: torch.amp.GradScaler | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``root/step-<state.step>`` and point ``root/latest.json`` at it; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    step = state.step
    name = f"step-{step:08d}"
    final = root / name
    with staged_directory(final) as tmp:
        model.save(tmp / "model")
        opt_tensors, opt_meta = _optimizer_to_safe(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        settle_file(tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        settle_file(tmp / "rng.safetensors")
        payload = {
            **state.to_dict(),
            "optimizer": opt_meta,
            "rng": rng_meta,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        }
        atomic_write_text(tmp / "state.json", json.dumps(payload))
    atomic_write_text(root / LATEST, json.dumps({"step": step, "path": name}) + "\n")
    _prune(root, keep=max(1, keep), current=name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``root/latest.json`` points at, or ``None`` when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    if not (path / "state.json").is_file():
        raise ValueError(
            f"{pointer} points at {path}, which is missing or incomplete: remove {pointer} to start over"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The whole ``state.json`` of checkpoint ``path``."""
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


def restore_training_state(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> LoopState:
    """Load optimizer (and scaler, RNG) state from checkpoint ``path``; returns the loop's state."""
    path = Path(path)
    state = read_state(path)
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    tensors = load_file(str(path / "optimizer.safetensors"), device=str(device))
    optimizer.load_state_dict(_optimizer_from_safe(tensors, state["optimizer"]))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        _set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
    return LoopState.from_dict(state)
