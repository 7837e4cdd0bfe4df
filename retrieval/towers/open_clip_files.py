"""open_clip's files: the config, weight and tokenizer files of a checkpoint, its image
preprocessing as a transformers image processor, and whether the open_clip package imports.

Shared by the conversion (:mod:`retrieval.towers.open_clip`) and the package towers
(:mod:`retrieval.towers.open_clip_package`); nothing here imports open_clip unless asked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from retrieval.towers.open_clip_layout import NotConvertibleError

logger = logging.getLogger(__name__)

__all__ = [
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_EXTRA",
    "OPEN_CLIP_WEIGHTS",
    "OpenCLIPCheckpoint",
    "find_weights",
    "image_processor_for",
    "open_clip_package",
    "read_state_dict",
    "why_not_importable",
]

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's own weight file names, in the order it prefers them
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
OPEN_CLIP_EXTRA = "pip install 'siamese-retrieval[open_clip]'"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "tokenizer_config.json",
    "spiece.model",
    "tokenizer.model",
)
# open_clip's defaults for preprocess_cfg (its PreprocessCfg): OpenAI's CLIP statistics
_PREPROCESS_DEFAULTS: dict[str, Any] = {
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


@dataclasses.dataclass(frozen=True)
class OpenCLIPCheckpoint:
    """An open_clip checkpoint's files: what :func:`load_open_clip` reads."""

    model_cfg: dict[str, Any]  # open_clip's model config (embed_dim, vision_cfg, text_cfg, ...)
    preprocess_cfg: dict[str, Any]  # mean, std, interpolation, resize_mode (open_clip's PreprocessCfg)
    weights: Path  # the weight file
    tokenizer_dir: Path | None = None  # a folder with tokenizer files, when there is one

    @classmethod
    def from_config_file(cls, config_path: Path, weights: Path) -> OpenCLIPCheckpoint:
        """Read ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``, or a bare model
        config as in open_clip's ``model_configs/``) beside ``weights``."""
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{config_path} is not a readable open_clip config ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("model_cfg", data), dict):
            raise ValueError(
                f"{config_path} is not an open_clip config: expected a JSON object with model_cfg"
            )
        model_cfg = data.get("model_cfg", data)
        if "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
            raise ValueError(
                f"{config_path} has no vision_cfg and text_cfg: expected open_clip's open_clip_config.json "
                '({"model_cfg": {"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}, "preprocess_cfg": ...})'
            )
        folder = weights.parent
        has_tokenizer = any((folder / name).is_file() for name in _TOKENIZER_FILES)
        return cls(
            model_cfg=model_cfg,
            preprocess_cfg=dict(data.get("preprocess_cfg") or {}),
            weights=weights,
            tokenizer_dir=folder if has_tokenizer else None,
        )


_IMPORT_ERROR: list[str] = []  # why open_clip did not import, once tried


def open_clip_package() -> Any:
    """The open_clip module, or ``None`` when it cannot be imported: not installed, or failing on
    import (open_clip imports torchvision, which fails beside a torch it was not built for)."""
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision's RuntimeError against another torch
        if not _IMPORT_ERROR:
            _IMPORT_ERROR.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            logger.debug("open_clip cannot be imported: %s", _IMPORT_ERROR[0])
        return None
    return open_clip


def why_not_importable() -> str:
    if not _IMPORT_ERROR:
        return "is not installed"
    first = _IMPORT_ERROR[0]
    if first.startswith(("ModuleNotFoundError", "ImportError: No module named")) and "open_clip" in first:
        return "is not installed"
    return f"fails to import here ({first}; open_clip needs a torchvision built for this torch)"


def find_weights(folder: Path) -> Path | None:
    """The open_clip weight file of ``folder`` (open_clip's preferred names first), or ``None``."""
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an open_clip weight file: safetensors, or a torch file read with
    ``weights_only=True`` (never unpickling code), unwrapped from a training checkpoint's
    ``state_dict`` and from DataParallel's ``module.`` prefix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code, a damaged file, not a torch file
            raise ValueError(
                f"{path} cannot be read as a torch weight file with weights_only=True ({exc}): give open_clip's "
                "safetensors or a checkpoint of tensors only"
            ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{path} holds no state dict of tensors: expected an open_clip checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def image_processor_for(preprocess_cfg: dict[str, Any], image_size: int, family: str = "clip") -> Any:
    """A transformers image processor doing what open_clip's eval transform does: resize the shortest
    side and centre-crop (``resize_mode="shortest"``) or resize to the square (``"squash"``; SigLIP's
    processor for ``family="siglip"``), then normalise with its mean and std. (transformers
    resamples, with PIL or torchvision, where open_clip uses torchvision's transforms: pixels can
    differ by a rounding step.)"""
    cfg = {**_PREPROCESS_DEFAULTS, **preprocess_cfg}
    size = cfg.get("size", image_size)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise NotConvertibleError(f"its images are not square (preprocess size={list(size)})")
        size = size[0]
    resample = 2 if cfg["interpolation"] == "bilinear" else 3  # PIL's BILINEAR / BICUBIC
    common = {"image_mean": list(cfg["mean"]), "image_std": list(cfg["std"]), "resample": resample}
    square = {"height": int(size), "width": int(size)}
    if cfg["resize_mode"] == "shortest":
        return _auto_processor(
            "CLIPImageProcessor",
            size={"shortest_edge": int(size)},
            crop_size=square,
            do_center_crop=True,
            **common,
        )
    if cfg["resize_mode"] == "squash" and family == "siglip":
        return _auto_processor("SiglipImageProcessor", size=square, **common)
    if cfg["resize_mode"] == "squash":
        return _auto_processor("CLIPImageProcessor", size=square, do_center_crop=False, **common)
    raise NotConvertibleError(f"its images are resized with resize_mode={cfg['resize_mode']!r}")


def _auto_processor(kind: str, **settings: Any) -> Any:
    """The image processor ``kind`` with ``settings``, made by ``AutoImageProcessor`` as a saved model's
    is when loaded again (transformers 5 picks its torchvision or PIL implementation), so the
    preprocessing, and the fingerprint, read the same before and after a save."""
    import tempfile

    from transformers import AutoImageProcessor

    with tempfile.TemporaryDirectory() as tmp:
        config = {"image_processor_type": kind, **settings}
        (Path(tmp) / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
        return AutoImageProcessor.from_pretrained(tmp)
