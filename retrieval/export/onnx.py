"""Towers as ONNX graphs: exported once, checked against torch, described by a JSON sidecar.

A tower's graph maps what the tower reads to what it returns, with a dynamic batch (and, for
text, a dynamic length):

* image: ``pixel_values [B, 3, H, W] float32 -> features [B, F]`` (``H``, ``W`` fixed by the
  tower's preprocessing);
* text: ``input_ids [B, L] int64, attention_mask [B, L] int64 -> features [B, F]``.

The projection heads are not in the graph: they are small, they are what training changes, and
leaving them out lets every model that shares a locked pretrained tower share one graph. A graph
folder is named and keyed by :func:`retrieval.towers.base.tower_fingerprint` and holds:

* ``tower.onnx`` -- the graph (the legacy TorchScript exporter, opset :data:`OPSET`);
* ``tower.opt.onnx`` -- with ``optimize`` (off by default, :data:`TRANSFORMER_OPTIMIZER`), for text
  towers that ONNX Runtime's transformer optimizer recognises (BERT-like encoders): the graph with
  fused attention, layer norm and GELU, kept only when it passes the same check;
* ``preprocess.json`` -- what the graph expects (:data:`PREPROCESS_FILE`): input and output
  names and shapes, the image side, mean and std, or the tokenizer files (saved beside it in
  ``tokenizer/``), the maximum length and padding; the fingerprint; the check's tolerance and
  measured difference; the versions that made it.

Every export is checked: ONNX Runtime runs the graph on a sample of another batch size (and, for
text, another length) than the one traced, and its output must equal the torch tower's within
``|onnx - torch| <= ATOL + RTOL * |torch|`` elementwise (:data:`RTOL` = 1e-3, :data:`ATOL` = 1e-4;
measured on EfficientNet-Lite0: 3e-5, on all-MiniLM-L6-v2: 1e-5..8e-5). A tower the exporter
cannot trace (packed GRU sequences, say) or whose graph disagrees raises :class:`ExportError`
with the reason; callers fall back to torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.export.errors import ExportError
from retrieval.io import atomic_write_json

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # layout of a graph folder; a folder of another format is exported again
OPSET = 17  # ONNX opset of the exported graphs (LayerNormalization is native from 17)
RTOL = 1e-3  # tolerance of the export check: |onnx - torch| <= ATOL + RTOL * |torch|, elementwise
ATOL = 1e-4
GRAPH_FILE = "tower.onnx"
OPTIMIZED_FILE = "tower.opt.onnx"
PREPROCESS_FILE = "preprocess.json"
TOKENIZER_DIR = "tokenizer"
SIDES = ("image", "text")
# Run ONNX Runtime's offline transformer optimizer on BERT-like text towers. Off: on all-MiniLM-L6-v2
# with ~10-token captions it did not beat the plain graph under ORT's own session optimizations (every
# measurement so far within noise, slightly behind); benchmarks/bench_encode.py measures both.
TRANSFORMER_OPTIMIZER = False
SAMPLE_CAPTIONS = (
    "a red car parked by the sea",
    "two small dogs",
    "an old photograph of a crowded market street at night, with lanterns",
    "x",
    "café, naïve façade — 日本",
)


@dataclasses.dataclass(frozen=True)
class TowerGraph:
    """An exported tower graph folder and what its sidecar says."""

    folder: Path  # the graph folder (tower.onnx, preprocess.json, ...)
    side: str  # "image" | "text"
    fingerprint: str  # the tower's fingerprint (retrieval.towers.base.tower_fingerprint)
    output_dim: int  # features per row
    max_abs_diff: float  # largest |onnx - torch| on the export check's sample
    optimized: bool  # tower.opt.onnx exists and passed the check (text towers ORT recognises)

    @property
    def path(self) -> Path:
        """The graph to run: the optimized one when there is one."""
        return self.folder / (OPTIMIZED_FILE if self.optimized else GRAPH_FILE)

    @property
    def preprocess(self) -> dict[str, Any]:
        return json.loads((self.folder / PREPROCESS_FILE).read_text(encoding="utf-8"))


def graph_folder(root: str | os.PathLike[str], side: str, fingerprint: str) -> Path:
    """Where the graph of the ``side`` tower with ``fingerprint`` lives under ``root``."""
    return Path(root) / f"{side}-{fingerprint[:32]}"


def read_graph(folder: str | os.PathLike[str], side: str, fingerprint: str) -> TowerGraph | None:
    """The graph in ``folder`` when it is a complete export of this tower in this format, else None."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / PREPROCESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        meta.get("format") != EXPORT_FORMAT
        or meta.get("side") != side
        or meta.get("fingerprint") != fingerprint
        or not (folder / GRAPH_FILE).is_file()
    ):
        return None
    optimized = bool(meta.get("optimized")) and (folder / OPTIMIZED_FILE).is_file()
    return TowerGraph(
        folder, side, fingerprint, int(meta["output_dim"]), float(meta["max_abs_diff"]), optimized
    )


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (and ONNX, which the exporter writes with) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An ONNX Runtime session of the graph at ``path`` on the CPU (all graph optimizations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's own warnings go to stderr, not to our log
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- samples
def _sample_images(n: int, seed: int) -> list[Any]:
    """``n`` synthetic RGB images (noise over gradients), varied in size and aspect."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = 48 + 16 * i, 64 + 8 * (i % 3)
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 40, size=(h, w, 3)).astype(np.float32)
        images.append(Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def _image_sample(tower: nn.Module, n: int, seed: int) -> tuple[torch.Tensor]:
    transform = tower.image_transform(False)  # type: ignore[operator]
    return (torch.stack([transform(image) for image in _sample_images(n, seed)]),)  # [n, 3, H, W]


def _text_sample(tower: nn.Module, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tower.tokenize(captions)  # type: ignore[operator]
    input_ids = tokens["input_ids"].long()  # [n, L]
    mask = tokens.get("attention_mask")
    attention_mask = torch.ones_like(input_ids) if mask is None else mask.long()  # [n, L]
    return input_ids, attention_mask


# --------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's tracer and deprecation warnings are about our own graph; keep them out of the
    user's console. PyTorch's fused transformer-layer path is traced as its plain ops."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], side: str, path: Path) -> None:
    if side == "image":
        names, dynamic = ["pixel_values"], {"pixel_values": {0: "batch"}, "features": {0: "batch"}}
    else:
        names = ["input_ids", "attention_mask"]
        dynamic = {
            "input_ids": {0: "batch", 1: "length"},
            "attention_mask": {0: "batch", 1: "length"},
            "features": {0: "batch"},
        }
    # the exporter prints the whole graph when it fails: the reason goes into the ExportError instead
    sink = io.StringIO()
    with _quiet_export(), torch.no_grad(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=["features"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _feeds(side: str, args: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    if side == "image":
        return {"pixel_values": args[0].numpy()}
    return {"input_ids": args[0].numpy(), "attention_mask": args[1].numpy()}


def _check(
    path: Path, side: str, checks: list[tuple[torch.Tensor, ...]], expected: list[np.ndarray]
) -> float:
    """Largest |onnx - torch| of the graph at ``path`` over the check samples; raises
    :class:`ExportError` when the graph fails on one or an element is outside the tolerance."""
    session = cpu_session(path)
    worst = 0.0
    for args, want in zip(checks, expected):
        shape = "x".join(str(n) for n in args[0].shape)
        try:
            got = session.run(["features"], _feeds(side, args))[0]
        except Exception as exc:  # ONNX Runtime raises its own types
            raise ExportError(f"the graph fails on inputs of shape {shape} ({type(exc).__name__})") from exc
        if got.shape != want.shape:
            raise ExportError(
                f"the graph returns shape {got.shape} for inputs {shape}, the tower {want.shape}"
            )
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.all(diff <= ATOL + RTOL * np.abs(want)):
            raise ExportError(
                f"the graph's output differs from the tower's by up to {worst:.3g} on inputs of shape "
                f"{shape} (tolerance {ATOL} + {RTOL} x |value|)"
            )
    return worst


def _optimize_text(graph: Path, out: Path, module: nn.Module) -> bool:
    """ONNX Runtime's transformer optimizer on a BERT-like text graph (fused attention, layer norm,
    GELU); True when it recognised the model and wrote ``out``."""
    config = getattr(getattr(module, "backbone", None), "config", None)
    model_type = getattr(config, "model_type", "")
    if model_type not in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra"):
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(graph), model_type="bert", num_heads=heads, hidden_size=hidden)
        fused = optimized.get_fused_operator_statistics()
        if not any(fused.get(op, 0) for op in ("Attention", "MultiHeadAttention", "SkipLayerNormalization")):
            return False
        optimized.save_model_to_file(str(out))
    return True


def export_tower(
    tower: nn.Module,
    side: str,
    folder: str | os.PathLike[str],
    fingerprint: str,
    *,
    optimize: bool = TRANSFORMER_OPTIMIZER,
) -> TowerGraph:
    """Export ``tower`` (the ``side`` tower: ``"image"`` or ``"text"``) into ``folder`` and check it.

    The folder is written atomically (a temporary sibling renamed into place); when another process
    finished the same export first, its folder is kept. ``fingerprint`` is the tower's
    (:func:`retrieval.towers.base.tower_fingerprint`), recorded in the sidecar. ``optimize`` tries ONNX
    Runtime's transformer optimizer on text towers. Raises :class:`ExportError` when the tower cannot
    be exported or its graph disagrees with it, ``ImportError`` when onnx / onnxruntime are missing.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, received {side!r}")
    if not onnxruntime_available():
        raise ImportError("exporting to ONNX needs onnx and onnxruntime: pip install onnx onnxruntime")
    folder = Path(folder)
    was_training = tower.training
    tower.eval()
    try:
        # traced on one shape, checked on others: a size the tracer froze into the graph shows here
        if side == "image":
            traced = _image_sample(tower, 2, 0)
            checks = [_image_sample(tower, 3, 1), _image_sample(tower, 1, 2)]
        else:
            # short captions: a length at the tower's limit could be traced as that limit
            traced = _text_sample(tower, ["a red car", "two dogs"])
            checks = [_text_sample(tower, list(SAMPLE_CAPTIONS)), _text_sample(tower, ["x"])]
            checks.append(_text_sample(tower, [SAMPLE_CAPTIONS[1], SAMPLE_CAPTIONS[3], SAMPLE_CAPTIONS[0]]))
        with torch.no_grad():
            expected = [tower(*args).float().numpy() for args in checks]  # [n, F] each
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            try:
                _trace(tower, traced, side, tmp / GRAPH_FILE)
            except Exception as exc:  # the exporter raises many types on what it cannot trace
                raise ExportError(
                    f"{type(tower).__name__} cannot be traced to ONNX: {type(exc).__name__}: {exc}"
                ) from exc
            worst = _check(tmp / GRAPH_FILE, side, checks, expected)
            optimized = False
            if side == "text" and optimize:
                try:
                    if _optimize_text(tmp / GRAPH_FILE, tmp / OPTIMIZED_FILE, tower):
                        worst = max(worst, _check(tmp / OPTIMIZED_FILE, side, checks, expected))
                        optimized = True
                except Exception as exc:  # the optimizer is an extra: keep the plain graph
                    logger.info("ONNX Runtime's transformer optimizer was not used: %s", exc)
                    (tmp / OPTIMIZED_FILE).unlink(missing_ok=True)
            meta = _sidecar(tower, side, fingerprint, expected[0].shape[1], worst, optimized, tmp)
            atomic_write_json(tmp / PREPROCESS_FILE, meta, indent=2, sort_keys=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process exported the same tower first: keep its folder
                if read_graph(folder, side, fingerprint) is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        tower.train(was_training)
    graph = read_graph(folder, side, fingerprint)
    if graph is None:  # pragma: no cover - the folder was just written
        raise ExportError(f"the exported graph folder {folder} is incomplete")
    logger.info(
        "exported the %s tower %s to %s (max |onnx - torch| %.2g%s)",
        side,
        type(tower).__name__,
        folder,
        graph.max_abs_diff,
        ", transformer-optimized" if graph.optimized else "",
    )
    return graph


def _sidecar(
    tower: nn.Module, side: str, fingerprint: str, dim: int, worst: float, optimized: bool, folder: Path
) -> dict[str, Any]:
    import onnxruntime

    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "side": side,
        "fingerprint": fingerprint,
        "tower": type(tower).__name__,
        "output_dim": int(dim),
        "outputs": {"features": ["batch", int(dim)]},
        "opset": OPSET,
        "optimized": optimized,
        "tolerance": {"rtol": RTOL, "atol": ATOL},
        "max_abs_diff": worst,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if side == "image":
        preprocess = tower.preprocess_config()  # type: ignore[operator]
        shape = list(_image_sample(tower, 1, 0)[0].shape[1:])
        meta["inputs"] = {"pixel_values": ["batch", *shape]}
        meta["preprocess"] = preprocess
    else:
        tower.save_assets(folder / TOKENIZER_DIR)  # type: ignore[operator]
        meta["inputs"] = {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]}
        meta["preprocess"] = {
            **tower.preprocess_config(),  # type: ignore[operator]
            "tokenizer_dir": TOKENIZER_DIR,
            "tokenizer_files": sorted(p.name for p in (folder / TOKENIZER_DIR).iterdir())
            if (folder / TOKENIZER_DIR).is_dir()
            else [],
        }
    return meta
