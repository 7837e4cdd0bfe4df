"""Export to transformers: a ``CLIPModel`` / ``SiglipModel`` folder with its processor and tokenizer.

A toolkit model whose towers are the two halves of a transformers CLIP (or SigLIP) model, as
``--init`` of a CLIP / SigLIP checkpoint or hub id makes them, is such a model with other weights:
the towers are copied back into a fresh ``CLIPModel`` / ``SiglipModel``, the toolkit's projection
heads folded into CLIP's projections when they are linear (no bias), and the temperature (and
SigLIP's bias) set. Other towers (from-scratch CNNs and GRUs, EfficientNet-Lite, sentence encoders
with mean pooling, mixed families, MLP heads) are no transformers architecture: :func:`as_transformers`
refuses them with :class:`ExportError`, naming ONNX, which carries any architecture.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from retrieval.export.errors import ExportError

__all__ = ["as_transformers", "transformers_family"]

_FAMILIES = {
    "clip": ("clip_vision_model", "clip_text_model"),
    "siglip": ("siglip_vision_model", "siglip_text_model"),
}
_ONNX = "export it with --to onnx instead (image and text graphs that any ONNX runtime loads)"


def _towers_text(model: Any) -> str:
    return f"image tower {model.config.image_tower!r}, text tower {model.config.text_tower!r}"


def transformers_family(model: Any) -> str:
    """``"clip"`` or ``"siglip"``: the transformers model both towers come from; :class:`ExportError`
    saying why not (and naming ONNX) otherwise."""
    from retrieval.towers.hf import HFImageTower, HFTextTower

    image, text = model.image_tower, model.text_tower
    if not isinstance(image, HFImageTower) or not isinstance(text, HFTextTower):
        raise ExportError(
            f"this model ({_towers_text(model)}) is a toolkit architecture that transformers' CLIPModel and "
            f"SiglipModel cannot express: {_ONNX}"
        )
    types = (image.backbone.config.model_type, text.backbone.config.model_type)
    family = next((name for name, pair in _FAMILIES.items() if pair == types), None)
    if family is None:
        raise ExportError(
            f"this model's towers are a transformers {types[0]!r} and a {types[1]!r} backbone, not the two "
            f"halves of one CLIP or SigLIP model, so no CLIPModel / SiglipModel holds them: {_ONNX}"
        )
    if text.pooling != "pooler":
        raise ExportError(
            f"this model pools its {family} text tower by {text.pooling!r}, where {family} takes its own "
            f"pooled output: {_ONNX}"
        )
    if model.config.shared:
        raise ExportError(f"this model shares one trunk between its towers: {_ONNX}")
    return family


def _linear(head: nn.Module, what: str) -> torch.Tensor | None:
    """The weight ``[out, in]`` of a bias-free linear head (dropout first is fine: it is off at
    inference), ``None`` for an identity head; :class:`ExportError` for anything else."""
    if isinstance(head, nn.Identity):
        return None
    layers = (
        [m for m in head.modules() if not isinstance(m, (nn.Sequential, nn.Dropout))]
        if isinstance(head, nn.Sequential)
        else [head]
    )
    if len(layers) == 1 and isinstance(layers[0], nn.Linear) and layers[0].bias is None:
        return layers[0].weight.detach()  # [E, F]
    raise ExportError(
        f"this model's {what} projection head ({head.__class__.__name__}, not one bias-free linear layer) has no place in transformers' model: {_ONNX}"
    )


def _fold(tower_proj: nn.Module, head: nn.Module, what: str, width: int) -> torch.Tensor:
    """CLIP's projection ``[E, W]`` doing the tower's projection then the toolkit's head."""
    inner = tower_proj.weight.detach() if isinstance(tower_proj, nn.Linear) else torch.eye(width)  # [F, W]
    outer = _linear(head, what)  # [E, F] or None
    return inner.clone() if outer is None else outer @ inner  # [E, W]


def as_transformers(model: Any) -> tuple[nn.Module, Any, Any]:
    """``(CLIPModel or SiglipModel, image processor, tokenizer)`` holding ``model``'s weights, in eval
    mode on the CPU; its normalised ``get_image_features`` / ``get_text_features`` are ``model``'s
    embeddings. :class:`ExportError` (naming ONNX) for a model transformers cannot express."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from retrieval.towers.hf import _skip_init

    family = transformers_family(model)
    image, text = model.image_tower, model.text_tower
    vision_core, text_core = image.backbone, text.backbone
    vision_config, text_config = vision_core.config.to_dict(), text_core.config.to_dict()
    text_config["max_position_embeddings"] = int(text_core.config.max_position_embeddings)
    scale = float(model.logit_scale.detach().reshape(-1)[0])
    if family == "clip":
        visual = _fold(image.projection, model.image_projection, "image", vision_core.config.hidden_size)
        textual = _fold(text.projection, model.text_projection, "text", text_core.config.hidden_size)
        if visual.shape[0] != textual.shape[0]:  # pragma: no cover - TwinEncoder projects both to embed_dim
            raise ExportError(
                f"image and text projections differ in size ({visual.shape[0]}, {textual.shape[0]})"
            )
        config = CLIPConfig(
            text_config=text_config,
            vision_config=vision_config,
            projection_dim=int(visual.shape[0]),
            logit_scale_init_value=scale,
        )
        with _skip_init():
            full = CLIPModel(config).to(torch.float32)
        full.visual_projection = nn.Linear(visual.shape[1], visual.shape[0], bias=False)
        full.text_projection = nn.Linear(textual.shape[1], textual.shape[0], bias=False)
        with torch.no_grad():
            full.visual_projection.weight.copy_(visual)
            full.text_projection.weight.copy_(textual)
    else:
        for head, what in ((model.image_projection, "image"), (model.text_projection, "text")):
            if not isinstance(head, nn.Identity):
                raise ExportError(
                    f"this model adds a projection head to SigLIP's {what} tower, which SiglipModel has no "
                    f"place for: {_ONNX}"
                )
        config = SiglipConfig(text_config=text_config, vision_config=vision_config)
        with _skip_init():
            full = SiglipModel(config).to(torch.float32)
    _load_into(full.vision_model, vision_core, "vision_model")
    _load_into(full.text_model, text_core, "text_model")
    with torch.no_grad():
        full.logit_scale.fill_(scale)
        if family == "siglip":
            bias = model.logit_bias
            full.logit_bias.fill_(float(bias.detach()) if bias is not None else 0.0)
    tokenizer = copy.deepcopy(text.tokenizer)
    tokenizer.model_max_length = int(text.max_length)
    return full.eval(), copy.deepcopy(image.processor), tokenizer


def _load_into(target: nn.Module, backbone: nn.Module, inner: str) -> None:
    """Copy a tower's backbone into the model's half; transformers versions differ in whether that
    half is the ``*VisionModel`` wrapper or the ``*VisionTransformer`` inside it."""
    wanted = set(target.state_dict())
    for candidate in (backbone, getattr(backbone, inner, None)):
        if isinstance(candidate, nn.Module) and set(candidate.state_dict()) == wanted:
            state = candidate.state_dict()
            target.load_state_dict(
                {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}, strict=True
            )
            return
    wrapped = {f"{inner}.{k}": v for k, v in backbone.state_dict().items()}
    if set(wrapped) == wanted:
        target.load_state_dict(
            {k: v.detach().to("cpu", torch.float32) for k, v in wrapped.items()}, strict=True
        )
        return
    raise ExportError(  # pragma: no cover - a transformers version with yet another layout
        f"the {inner} weights do not fit transformers' {type(target).__name__} of this version"
    )
