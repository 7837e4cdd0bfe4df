"""Export to open_clip: ``open_clip_config.json`` + ``open_clip_model.safetensors`` + tokenizer files,
the folder open_clip loads as ``local-dir:DIR`` (and as ``hf-hub:ORG/NAME`` once uploaded).

The model must be a transformers CLIP underneath (:func:`retrieval.export.to_transformers.as_transformers`)
whose settings open_clip's ``CLIP`` can build (:func:`retrieval.towers.open_clip_layout.open_clip_config_from_clip`).
SigLIP is refused: open_clip builds SigLIP image towers only as timm's named models, which a
fine-tuned or resized SigLIP need not match. Models whose towers already run on the open_clip
package (architectures that do not convert) are written back as they are.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from retrieval.export.errors import ExportError
from retrieval.export.to_transformers import as_transformers, transformers_family
from retrieval.towers.open_clip_layout import (
    NotConvertibleError,
    clip_to_open_clip_state,
    open_clip_config_from_clip,
)

__all__ = ["as_open_clip", "preprocess_cfg_of"]


def preprocess_cfg_of(processor: Any) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode) of a transformers
    CLIP image processor: a shortest-side resize and centre crop is ``"shortest"``, a resize to the
    square ``"squash"``."""
    crop = getattr(processor, "crop_size", None) or {}
    size = getattr(processor, "size", None) or {}
    center = bool(getattr(processor, "do_center_crop", False))
    if center and crop.get("height"):
        if crop["height"] != crop.get("width"):
            raise ExportError(f"open_clip crops squares; this model's processor crops {crop}")
        side, mode = int(crop["height"]), "shortest"
    elif size.get("height"):
        if size["height"] != size.get("width"):
            raise ExportError(f"open_clip resizes to squares; this model's processor resizes to {size}")
        side, mode = int(size["height"]), "squash"
    elif size.get("shortest_edge"):
        side, mode = int(size["shortest_edge"]), "shortest"
    else:
        raise ExportError(f"cannot tell the image size of this model's processor ({size}, crop {crop})")
    resample = int(getattr(getattr(processor, "resample", 3), "value", getattr(processor, "resample", 3)))
    return {
        "size": side,
        "mean": [float(v) for v in processor.image_mean],
        "std": [float(v) for v in processor.image_std],
        "interpolation": "bilinear" if resample == 2 else "bicubic",
        "resize_mode": mode,
    }


def _package_model(model: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any] | None:
    """A model whose towers run on the open_clip package is open_clip's model already: its config,
    the two towers' weights under open_clip's names, its tokenizer's files."""
    image, text = model.image_tower, model.text_tower
    if type(image).__name__ != "OpenCLIPImageTower" or type(text).__name__ != "OpenCLIPTextTower":
        return None
    for head, what in ((model.image_projection, "image"), (model.text_projection, "text")):
        if not isinstance(head, torch.nn.Identity):
            raise ExportError(
                f"this model adds a projection head to open_clip's {what} tower: export it with --to onnx"
            )
    state = {f"visual.{k}": v for k, v in image.visual.state_dict().items()}
    state.update({k: v for k, v in text.model.state_dict().items() if not k.startswith("visual.")})
    state["logit_scale"] = model.logit_scale.detach().reshape(())
    config = json.loads(json.dumps(text.open_clip_config))
    if model.logit_bias is not None:
        state["logit_bias"] = model.logit_bias.detach().reshape(())
        config["model_cfg"]["init_logit_bias"] = float(model.logit_bias.detach())
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return config, state, getattr(text.tokenizer, "tokenizer", text.tokenizer)


def as_open_clip(model: Any, tokenizer_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """``(open_clip_config.json content, state dict, tokenizer)`` for ``model``; the config names
    ``tokenizer_name`` as its Hugging Face tokenizer (the hub repo the folder will live in, or its
    base model's), which is how open_clip finds the tokenizer files. :class:`ExportError` when
    open_clip cannot express the model."""
    package = _package_model(model)
    if package is not None:
        return package
    if transformers_family(model) == "siglip":
        raise ExportError(
            "open_clip builds SigLIP image towers only as timm's named models, which this SigLIP need not "
            "match: export it with --to transformers (SiglipModel) or --to onnx"
        )
    full, processor, tokenizer = as_transformers(model)
    try:
        model_cfg = open_clip_config_from_clip(full.config)
    except NotConvertibleError as exc:
        raise ExportError(
            f"open_clip's CLIP cannot build this model: {exc.reason}; export it with --to transformers or --to onnx"
        ) from exc
    model_cfg["text_cfg"]["hf_tokenizer_name"] = tokenizer_name
    bias = model.logit_bias
    if bias is not None:
        model_cfg["init_logit_bias"] = float(bias.detach())
    state = clip_to_open_clip_state(
        full.state_dict(), logit_bias=float(bias.detach()) if bias is not None else None
    )
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg_of(processor)}
    return config, state, tokenizer
