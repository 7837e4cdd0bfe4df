"""open_clip's CLIP layout and transformers' ``CLIPModel``, one table for both directions.

open_clip (Ilharco et al. 2021, "OpenCLIP"; the layout of OpenAI's CLIP, Radford et al. 2021) stores a
ViT image tower as ``visual.{conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.N.*, ln_post, proj}`` and the text tower as ``{token_embedding,
positional_embedding, transformer.resblocks.N.*, ln_final, text_projection}`` (under ``text.`` in its
``CustomTextCLIP``). Each block is ``ln_1``, ``attn`` (``nn.MultiheadAttention``: one packed
``in_proj_weight [3W, W]``), ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``; projections are matrices applied as
``x @ proj`` (``[W, E]``). transformers' ``CLIPModel`` holds the same numbers with separate q/k/v
projections and ``nn.Linear`` projections (``[E, W]``). Both pool the image tower's class token after
the final LayerNorm and the text tower's end-of-text token after its own.

:func:`clip_config_from_open_clip` says whether an open_clip model config is of this layout (and why
not when it is not); :func:`open_clip_to_clip_state` / :func:`clip_to_open_clip_state` move the weights
either way; :func:`open_clip_config_from_clip` writes the open_clip config of a ``CLIPConfig``.
Nothing here imports open_clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "NotConvertibleError",
    "clip_config_from_open_clip",
    "clip_to_open_clip_state",
    "open_clip_config_from_clip",
    "open_clip_to_clip_state",
    "text_prefix",
]

# open_clip's defaults for the fields this layout reads (its CLIPVisionCfg / CLIPTextCfg dataclasses)
_VISION_DEFAULTS = {
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "mlp_ratio": 4.0,
    "patch_size": 16,
    "image_size": 224,
}
_TEXT_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
    "pool_type": "argmax",
    "eos_id": 2,
}
# Settings of the vision / text config that transformers' CLIP has no counterpart for, with the value
# (or values) that keeps the model inside the shared layout.
_VISION_FIXED: dict[str, tuple[Any, ...]] = {
    "timm_model_name": (None, ""),
    "ls_init_value": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "final_ln_after_pool": (False,),
    "pool_type": ("tok",),
    "act_kwargs": (None, {}),
    "block_type": (None, "default"),
    "qk_norm": (False,),
    "scaled_cosine_attn": (False,),
    "scale_heads": (False,),
    "scale_attn_inner": (False,),
    "scale_attn": (False,),
    "scale_fc": (False,),
}
_TEXT_FIXED: dict[str, tuple[Any, ...]] = {
    "hf_model_name": (None, ""),
    "ls_init_value": (None,),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "final_ln_after_pool": (False,),
    "pool_type": ("argmax", "eos"),
    "proj_bias": (False,),
    "proj_type": ("linear",),
    "act_kwargs": (None, {}),
    "block_type": (None, "default"),
    "qk_norm": (False,),
    "scaled_cosine_attn": (False,),
    "scale_heads": (False,),
    "scale_attn_inner": (False,),
    "scale_attn": (False,),
    "scale_fc": (False,),
}
_MODEL_FIXED: dict[str, tuple[Any, ...]] = {"multimodal_cfg": (None, {})}  # CoCa's decoder
_LAYER_NORM_EPS = 1e-5  # torch's (and so open_clip's) LayerNorm default


class NotConvertibleError(ValueError):
    """An open_clip or transformers model that the shared CLIP layout cannot hold; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def text_prefix(state: Mapping[str, Any]) -> str:
    """``"text."`` for open_clip's ``CustomTextCLIP`` state dicts, ``""`` for ``CLIP``'s."""
    return "text." if "text.token_embedding.weight" in state else ""


def _eps(cfg: Mapping[str, Any], what: str) -> float:
    norm = cfg.get("norm_kwargs") or {}
    unknown = sorted(set(norm) - {"eps"})
    if unknown:
        raise NotConvertibleError(f"its {what} LayerNorm takes {unknown}, which transformers' CLIP has not")
    return float(norm.get("eps", _LAYER_NORM_EPS))


def _check_fixed(cfg: Mapping[str, Any], fixed: Mapping[str, tuple[Any, ...]], what: str) -> None:
    for key, allowed in fixed.items():
        if key in cfg and cfg[key] not in allowed:
            raise NotConvertibleError(f"its {what} config sets {key}={cfg[key]!r}")


def _intermediate(width: int, mlp_ratio: float) -> int:
    return int(width * mlp_ratio)  # open_clip's rounding


def clip_config_from_open_clip(
    model_cfg: Mapping[str, Any], eos_token_id: int | None = None
) -> dict[str, Any]:
    """The ``CLIPConfig`` keyword arguments of an open_clip model config (``open_clip_config.json``'s
    ``model_cfg``), or :class:`NotConvertibleError` naming the first setting transformers' CLIP cannot
    express (timm or Hugging Face towers, ResNets, attentional pooling, layer scale, CoCa, ...).

    ``eos_token_id``: the tokenizer's end-of-text id, used when the text tower pools at it
    (``pool_type="eos"``); ``"argmax"`` pooling (the highest token id, CLIP's end-of-text) is
    transformers' ``eos_token_id=2`` rule, which takes the argmax."""
    _check_fixed(model_cfg, _MODEL_FIXED, "model")
    vision = {**_VISION_DEFAULTS, **(model_cfg.get("vision_cfg") or {})}
    text = {**_TEXT_DEFAULTS, **(model_cfg.get("text_cfg") or {})}
    _check_fixed(vision, _VISION_FIXED, "vision")
    _check_fixed(text, _TEXT_FIXED, "text")
    if isinstance(vision["layers"], (list, tuple)):
        raise NotConvertibleError("its image tower is a ResNet (vision_cfg.layers is a list)")
    size, patch = vision["image_size"], vision["patch_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise NotConvertibleError(f"its images are not square (image_size={list(size)})")
        size = size[0]
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise NotConvertibleError(f"its patches are not square (patch_size={list(patch)})")
        patch = patch[0]
    if vision["width"] % vision["head_width"]:
        raise NotConvertibleError(f"vision width {vision['width']} is not a multiple of head_width")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    if text["pool_type"] == "argmax":
        eos = 2  # transformers' CLIP pools at the argmax of the ids exactly when eos_token_id == 2
    else:
        eos = int(text.get("eos_id", 2))
        if eos == 2 or (eos_token_id is not None and eos_token_id != eos):
            raise NotConvertibleError(
                f"its text tower pools at token id {eos}, which transformers' CLIP cannot"
            )
    embed_dim = int(model_cfg.get("embed_dim", 512))
    return {
        "projection_dim": embed_dim,
        "vision_config": {
            "hidden_size": int(vision["width"]),
            "intermediate_size": _intermediate(vision["width"], vision["mlp_ratio"]),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": int(vision["width"]) // int(vision["head_width"]),
            "image_size": int(size),
            "patch_size": int(patch),
            "hidden_act": act,
            "layer_norm_eps": _eps(vision, "vision"),
            "projection_dim": embed_dim,
        },
        "text_config": {
            "vocab_size": int(text["vocab_size"]),
            "hidden_size": int(text["width"]),
            "intermediate_size": _intermediate(text["width"], text["mlp_ratio"]),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]),
            "max_position_embeddings": int(text["context_length"]),
            "hidden_act": act,
            "layer_norm_eps": _eps(text, "text"),
            "eos_token_id": eos,
            "projection_dim": embed_dim,
        },
    }


def open_clip_config_from_clip(config: Any) -> dict[str, Any]:
    """open_clip's ``model_cfg`` for a transformers ``CLIPConfig`` (the inverse of
    :func:`clip_config_from_open_clip`); :class:`NotConvertibleError` when open_clip cannot build it."""
    vision, text = config.vision_config, config.text_config
    acts = {vision.hidden_act, text.hidden_act}
    if len(acts) != 1 or not acts <= {"gelu", "quick_gelu"}:
        raise NotConvertibleError(
            f"its towers use the activations {sorted(acts)}; open_clip builds one of gelu or quick_gelu for both"
        )
    for what, tower in (("vision", vision), ("text", text)):
        ratio = tower.intermediate_size / tower.hidden_size
        if _intermediate(tower.hidden_size, ratio) != tower.intermediate_size:
            raise NotConvertibleError(
                f"its {what} MLP width {tower.intermediate_size} is no ratio open_clip rounds to"
            )
    if vision.hidden_size % vision.num_attention_heads:
        raise NotConvertibleError("its vision width is not a multiple of its number of heads")

    def norm(tower: Any) -> dict[str, Any]:
        eps = float(tower.layer_norm_eps)
        return {} if math.isclose(eps, _LAYER_NORM_EPS) else {"norm_kwargs": {"eps": eps}}

    eos = int(text.eos_token_id) if text.eos_token_id is not None else 2
    pool = {"pool_type": "argmax"} if eos == 2 else {"pool_type": "eos", "eos_id": eos}
    return {
        "embed_dim": int(config.projection_dim),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "image_size": int(vision.image_size),
            "layers": int(vision.num_hidden_layers),
            "width": int(vision.hidden_size),
            "head_width": int(vision.hidden_size) // int(vision.num_attention_heads),
            "mlp_ratio": vision.intermediate_size / vision.hidden_size,
            "patch_size": int(vision.patch_size),
            **norm(vision),
        },
        "text_cfg": {
            "context_length": int(text.max_position_embeddings),
            "vocab_size": int(text.vocab_size),
            "width": int(text.hidden_size),
            "heads": int(text.num_attention_heads),
            "layers": int(text.num_hidden_layers),
            "mlp_ratio": text.intermediate_size / text.hidden_size,
            **pool,
            **norm(text),
        },
    }


def _block_pairs(open_clip: str, hf: str) -> Iterator[tuple[str, str, str]]:
    """``(open_clip key, transformers key, how)`` for one residual block; how: copy | qkv."""
    yield f"{open_clip}.attn.in_proj_weight", f"{hf}.self_attn.%s_proj.weight", "qkv"
    yield f"{open_clip}.attn.in_proj_bias", f"{hf}.self_attn.%s_proj.bias", "qkv"
    for oc_name, hf_name in (
        ("attn.out_proj", "self_attn.out_proj"),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    ):
        for leaf in ("weight", "bias"):
            yield f"{open_clip}.{oc_name}.{leaf}", f"{hf}.{hf_name}.{leaf}", "copy"


def _pairs(vision_layers: int, text_layers: int, text: str) -> Iterator[tuple[str, str, str]]:
    """Every ``(open_clip key, transformers key, how)``; how: copy | T (transpose) | qkv | scalar."""
    yield "visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", "copy"
    yield "visual.class_embedding", "vision_model.embeddings.class_embedding", "copy"
    yield "visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", "copy"
    for leaf in ("weight", "bias"):
        yield f"visual.ln_pre.{leaf}", f"vision_model.pre_layrnorm.{leaf}", "copy"
        yield f"visual.ln_post.{leaf}", f"vision_model.post_layernorm.{leaf}", "copy"
    for i in range(vision_layers):
        yield from _block_pairs(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    yield "visual.proj", "visual_projection.weight", "T"
    yield f"{text}token_embedding.weight", "text_model.embeddings.token_embedding.weight", "copy"
    yield f"{text}positional_embedding", "text_model.embeddings.position_embedding.weight", "copy"
    for i in range(text_layers):
        yield from _block_pairs(f"{text}transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    for leaf in ("weight", "bias"):
        yield f"{text}ln_final.{leaf}", f"text_model.final_layer_norm.{leaf}", "copy"
    yield f"{text}text_projection", "text_projection.weight", "T"
    yield "logit_scale", "logit_scale", "scalar"


def _layers(state: Mapping[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def open_clip_to_clip_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], float | None]:
    """An open_clip CLIP-layout state dict -> (``CLIPModel`` state dict, logit bias or ``None``).

    Raises :class:`NotConvertibleError` when keys are missing or left over (another layout)."""
    text = text_prefix(state)
    pairs = list(
        _pairs(
            _layers(state, "visual.transformer.resblocks."),
            _layers(state, f"{text}transformer.resblocks."),
            text,
        )
    )
    missing = [oc for oc, _, _ in pairs if oc not in state]
    if missing:
        raise NotConvertibleError(f"its weights lack {missing[:3]} (not open_clip's ViT CLIP layout)")
    used = {oc for oc, _, _ in pairs} | {"logit_bias", f"{text}attn_mask", "attn_mask"}
    extra = sorted(k for k in state if k not in used)
    if extra:
        raise NotConvertibleError(f"its weights hold {extra[:3]}, which transformers' CLIP has no place for")
    out: dict[str, torch.Tensor] = {}
    for oc, hf, how in pairs:
        value = state[oc]
        if how == "qkv":
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[hf % name] = part.clone()
        elif how == "T":
            out[hf] = value.t().contiguous()  # [W, E] -> [E, W]
        elif how == "scalar":
            out[hf] = value.reshape(())
        else:
            out[hf] = value
    bias = state.get("logit_bias")
    return out, (float(bias.reshape(-1)[0]) if bias is not None else None)


def clip_to_open_clip_state(
    state: Mapping[str, torch.Tensor], *, custom_text: bool = False, logit_bias: float | None = None
) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict -> open_clip's CLIP (``custom_text``: ``CustomTextCLIP``) state dict."""
    text = "text." if custom_text else ""
    pairs = list(
        _pairs(
            _layers(state, "vision_model.encoder.layers."), _layers(state, "text_model.encoder.layers."), text
        )
    )
    out: dict[str, torch.Tensor] = {}
    for oc, hf, how in pairs:
        if how == "qkv":
            out[oc] = torch.cat([state[hf % name] for name in ("q", "k", "v")], dim=0).contiguous()
        elif how == "T":
            out[oc] = state[hf].t().contiguous()  # [E, W] -> [W, E]
        elif how == "scalar":
            out[oc] = state[hf].reshape(()).clone()
        else:
            out[oc] = state[hf].contiguous()
    if logit_bias is not None:
        out["logit_bias"] = torch.tensor(float(logit_bias))
    return out
