"""Where and how a model runs while it encodes: the default device, eval mode held and restored,
and the helper thread that prepares the next batches."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from retrieval.encoding.batches import PREFETCH_DEPTH


def pick_device(preference: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``preference`` as a device; ``None`` / ``""`` / ``"auto"``: CUDA when present (GPU
    ``local_rank`` modulo the GPU count), else the CPU. Asking for CUDA without it is an error."""
    if preference is None or preference in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(preference)!r} requested but CUDA is not available: use 'cpu' or leave it unset"
        )
    return device


def _home(model: Any) -> torch.device | None:
    """Where a model's weights are (``None`` for a model without torch parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        first = next(model.parameters(), None)
        return first.device if first is not None else None
    return None


@contextlib.contextmanager
def inference(model: Any, device: str | torch.device | None = None) -> Iterator[torch.device]:
    """Hold ``model`` in eval mode on ``device`` (default: where it is) and yield that device; its
    mode and device are restored on exit. A model already in eval mode where it is is not touched."""
    home = _home(model)
    target = torch.device(device) if device is not None else (home or torch.device("cpu"))
    module = isinstance(model, torch.nn.Module)
    was_training = module and model.training
    moved = module and home is not None and target != home
    if moved:
        model.to(target)
    if was_training:
        model.eval()
    try:
        yield target
    finally:
        if was_training:
            model.train(True)
        if moved:
            model.to(home)


def prefetch(iterable: Iterable[Any], depth: int = PREFETCH_DEPTH) -> Iterator[Any]:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; its errors are re-raised here
    and the thread stops when this iterator is closed or abandoned."""
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="encoding-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
