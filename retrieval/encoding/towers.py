"""How a model's towers run while encoding: eager torch, or their ONNX graphs on ONNX Runtime.

``runtime`` is one of :data:`retrieval.config.RUNTIMES`:

* ``"torch"`` -- the towers run as they are (eager PyTorch).
* ``"onnx"`` -- each tower runs as its ONNX graph on ONNX Runtime (exported on first use, see
  below); raises ``ImportError`` when onnxruntime is not installed.
* ``"auto"`` -- ONNX Runtime on the CPU when it is installed and the tower exports; on CUDA,
  ONNX Runtime's CUDA provider when it has one, else torch. Towers of fewer than
  :data:`AUTO_MIN_PARAMETERS` parameters stay on torch: exporting and checking a graph costs about a
  second, more than such a tower ever spends encoding.

Only the towers change runtime: the projection heads always run on torch (they are small, and
they are what training changes), so a graph depends on its tower alone and every model that
shares a locked pretrained tower shares one graph. Graphs are looked up by the tower's
fingerprint (:func:`retrieval.towers.base.tower_fingerprint`) beside the model (``onnx/`` in a
model folder saved by the toolkit) and in the cache (``$RETRIEVAL_CACHE/onnx``); a missing one is
exported (:func:`retrieval.export.onnx.export_tower`, checked against torch) beside the model when
that folder is writable, else into the cache. A tower that cannot be exported is logged once and
runs on torch. Sessions use as many intra-op threads as torch does (``torch.get_num_threads()``:
the machine's cores unless the user set fewer).

What is computed per model object (tower fingerprints, sessions) is kept here, keyed weakly by
the model, and recomputed when a tower's tensors change (another tensor, or an in-place update:
each tensor's data pointer and version counter are compared on every call), so a model that
trains on between two encodings never runs a stale graph.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.config import RUNTIMES

logger = logging.getLogger(__name__)

SIDES = ("image", "text")
AUTO_MIN_PARAMETERS = 1_000_000  # "auto" runs smaller towers on torch (tests set it lower)
ONNX_DIR = "onnx"  # graphs beside a model, in its folder
_INPUTS = {"image": ("pixel_values",), "text": ("input_ids", "attention_mask")}


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")
    return runtime


def model_runtime(model: Any, runtime: str | None) -> str:
    """``runtime``, or when None the model's own choice (``model.runtime``), else ``"torch"``."""
    return check_runtime(runtime if runtime is not None else getattr(model, "runtime", None) or "torch")


def tower_of(model: Any, side: str) -> torch.nn.Module | None:
    """The ``side`` tower of a model whose head can run apart from it (a TwinEncoder), else None."""
    head = "project_image" if side == "image" else "project_text"
    tower = getattr(model, f"{side}_tower", None)
    return tower if isinstance(tower, torch.nn.Module) and hasattr(model, head) else None


class TowerRunner:
    """One tower's ONNX graph in an ONNX Runtime session: ``runner(*inputs) -> features [B, F]``
    (float32 CPU tensor). Thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, graph: Any, side: str, provider: str, device_id: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if provider == "cuda":
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": device_id}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self.graph = graph
        self.side = side
        self.provider = provider
        self.session = ort.InferenceSession(str(graph.path), options, providers=providers)
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = {}
        for name, tensor in zip(_INPUTS[self.side], tensors):
            if name in self.inputs:  # a graph may drop an input it never reads
                dtype = np.float32 if name == "pixel_values" else np.int64
                feeds[name] = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
        return torch.from_numpy(self.session.run(["features"], feeds)[0])  # [B, F]


@dataclasses.dataclass
class _TowerState:
    signature: tuple[tuple[int, int], ...]
    fingerprint: str | None = None
    runners: dict[str, TowerRunner | None] = dataclasses.field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[Any, dict[str, _TowerState]] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()
_WARNED: set[str] = set()


def _signature(tower: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(tower.parameters(), tower.buffers()))


def _state(model: Any, side: str, tower: torch.nn.Module) -> _TowerState:
    signature = _signature(tower)
    per_model = _STATES.setdefault(model, {})
    state = per_model.get(side)
    if state is None or state.signature != signature:
        state = per_model[side] = _TowerState(signature)
    return state


def fingerprint(model: Any, side: str) -> str:
    """The fingerprint of the model's ``side`` tower, computed once per state of its tensors."""
    tower = tower_of(model, side)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no {side} tower whose head runs apart from it")
    from retrieval.towers.base import tower_fingerprint

    with _LOCK:
        state = _state(model, side, tower)
        if state.fingerprint is None:
            state.fingerprint = tower_fingerprint(tower)
        return state.fingerprint


def _provider(runtime: str, device: torch.device) -> str | None:
    """``"cpu"`` / ``"cuda"`` (ONNX Runtime's provider to use) or None (torch)."""
    if runtime == "torch":
        return None
    from retrieval.export.onnx import onnxruntime_available

    if not onnxruntime_available():
        if runtime == "onnx":
            raise ImportError(
                "runtime='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx "
                "(or use runtime='torch')"
            )
        return None
    if device.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "cuda"
        if runtime == "auto":
            return None
    return "cpu"


def graph_roots(model: Any) -> tuple[list[Path], Path]:
    """``(folders searched for graphs, folder a new export goes to)``: the model's own ``onnx/`` (a
    toolkit model folder) first, then the cache; exports go beside the model when it is writable."""
    from retrieval.paths import cache_dir

    cache = cache_dir(ONNX_DIR)
    source = getattr(model, "source", None)
    folder = getattr(source, "path", None) if getattr(source, "kind", None) == "toolkit" else None
    if folder is None:
        return [cache], cache
    beside = Path(folder) / ONNX_DIR
    writable = os.access(folder, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK))
    return [beside, cache], (beside if writable else cache)


def tower_runner(model: Any, side: str, runtime: str | None, device: torch.device) -> TowerRunner | None:
    """The ONNX Runtime runner of the model's ``side`` tower for ``runtime`` on ``device``, or None
    when the tower runs on torch (runtime "torch", no onnxruntime under "auto", a tower that cannot
    be exported, a model without separable towers)."""
    chosen = model_runtime(model, runtime)
    choice = _provider(chosen, device)
    tower = tower_of(model, side)
    if choice is None or tower is None:
        return None
    if chosen == "auto" and sum(p.numel() for p in tower.parameters()) < AUTO_MIN_PARAMETERS:
        return None
    key = f"{choice}:{device.index or 0}"
    fp = fingerprint(model, side)
    with _LOCK:
        state = _state(model, side, tower)
        if key not in state.runners:
            state.runners[key] = _build_runner(model, side, tower, fp, choice, device.index or 0)
        return state.runners[key]


def _build_runner(
    model: Any, side: str, tower: torch.nn.Module, fp: str, provider: str, device_id: int
) -> TowerRunner | None:
    from retrieval.export.onnx import ExportError, export_tower, graph_folder, read_graph

    searched, target = graph_roots(model)
    graph = next(
        (g for root in searched if (g := read_graph(graph_folder(root, side, fp), side, fp)) is not None),
        None,
    )
    if graph is None:
        try:
            try:
                graph = export_tower(tower, side, graph_folder(target, side, fp), fp)
            except OSError:  # the model's folder refused the write after all (a read-only mount)
                if target == searched[-1]:
                    raise
                graph = export_tower(tower, side, graph_folder(searched[-1], side, fp), fp)
        except ExportError as exc:
            if fp not in _WARNED:
                _WARNED.add(fp)
                logger.warning(
                    "the %s tower %s runs on torch: it cannot run on ONNX Runtime (%s)",
                    side,
                    type(tower).__name__,
                    exc,
                )
            return None
    try:
        return TowerRunner(graph, side, provider, device_id)
    except Exception as exc:  # a graph this ONNX Runtime cannot load (another version wrote it)
        if fp not in _WARNED:
            _WARNED.add(fp)
            logger.warning(
                "the %s tower runs on torch: ONNX Runtime cannot load %s (%s)", side, graph.path, exc
            )
        return None


def forget(model: Any) -> None:
    """Drop what is kept for ``model`` (sessions, fingerprints)."""
    with _LOCK:
        _STATES.pop(model, None)
