"""open_clip's SigLIP layout as transformers' ``SiglipModel`` (Zhai et al. 2023, "Sigmoid Loss for
Language Image Pre-Training"), without the open_clip or timm packages.

open_clip builds SigLIP's image tower as a timm ViT (``visual.trunk``: ``patch_embed.proj``,
``pos_embed [1, N, W]`` without a class token, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}``, ``norm``, then the attention-pooling head ``attn_pool.{latent, q, kv, proj,
norm, mlp}``) and its text tower as its own bidirectional transformer (``text.*``, pooled at the
last position, projected by a linear layer with bias). transformers' ``SiglipModel`` holds the same
numbers under other names (its pooling head is a ``nn.MultiheadAttention`` with packed q/k/v).

timm names the image tower (``vit_base_patch16_siglip_224``); sizes come from the weights, and the
two facts the weights do not show (number of heads, tanh-approximated GELU or not) from the table
below, as timm defines those models. A name not in it, or a setting outside the layout, raises
:class:`~retrieval.towers.open_clip_layout.NotConvertibleError` (the open_clip package then runs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from retrieval.towers.open_clip_layout import NotConvertibleError

__all__ = ["open_clip_to_siglip"]

_TANH = {"vit_base_patch32_siglip_256", "vit_large_patch16_siglip_512"}
_TIMM_NAME = re.compile(r"^vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(\d+)$")
_ACTS = {False: "gelu", True: "gelu_pytorch_tanh"}


def _timm_facts(name: str) -> tuple[int, bool]:
    """``(heads, tanh GELU)`` of timm's SigLIP ViT ``name`` (attention-pooled variants)."""
    match = _TIMM_NAME.match(name or "")
    if not match:
        raise NotConvertibleError(f"its image tower is timm's {name!r}, not one of timm's SigLIP ViTs")
    size, patch = match.group(1), int(match.group(2))
    heads = 12 if size == "base" else 16
    tanh = name in _TANH or size == "giantopt" or (size == "so400m" and patch == 16)
    return heads, tanh


def _check(cfg: Mapping[str, Any], key: str, allowed: tuple[Any, ...], what: str) -> None:
    if cfg.get(key, allowed[0]) not in allowed:
        raise NotConvertibleError(f"its {what} config sets {key}={cfg[key]!r}")


def _pairs(vision_layers: int, text_layers: int) -> Iterator[tuple[str, str, str]]:
    """``(open_clip key, transformers key, how)``; how: copy | qkv (split in 3) | kv (q + kv packed) | flat."""
    v, t = "visual.trunk.", "text."
    for leaf in ("weight", "bias"):
        yield f"{v}patch_embed.proj.{leaf}", f"vision_model.embeddings.patch_embedding.{leaf}", "copy"
        yield f"{v}norm.{leaf}", f"vision_model.post_layernorm.{leaf}", "copy"
        yield f"{v}attn_pool.q.{leaf}", f"vision_model.head.attention.in_proj_{leaf}", "kv"
        yield f"{v}attn_pool.proj.{leaf}", f"vision_model.head.attention.out_proj.{leaf}", "copy"
        yield f"{v}attn_pool.norm.{leaf}", f"vision_model.head.layernorm.{leaf}", "copy"
        for fc in ("fc1", "fc2"):
            yield f"{v}attn_pool.mlp.{fc}.{leaf}", f"vision_model.head.mlp.{fc}.{leaf}", "copy"
        for i in range(vision_layers):
            block, layer = f"{v}blocks.{i}.", f"vision_model.encoder.layers.{i}."
            yield f"{block}attn.qkv.{leaf}", f"{layer}self_attn.%s_proj.{leaf}", "qkv"
            for ours, theirs in (
                ("norm1", "layer_norm1"),
                ("attn.proj", "self_attn.out_proj"),
                ("norm2", "layer_norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                yield f"{block}{ours}.{leaf}", f"{layer}{theirs}.{leaf}", "copy"
        for i in range(text_layers):
            block, layer = f"{t}transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
            yield f"{block}attn.in_proj_{leaf}", f"{layer}self_attn.%s_proj.{leaf}", "qkv"
            for ours, theirs in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                yield f"{block}{ours}.{leaf}", f"{layer}{theirs}.{leaf}", "copy"
        yield f"{t}ln_final.{leaf}", f"text_model.final_layer_norm.{leaf}", "copy"
        yield f"{t}text_projection.{leaf}", f"text_model.head.{leaf}", "copy"
    yield f"{v}pos_embed", "vision_model.embeddings.position_embedding.weight", "flat"
    yield f"{v}attn_pool.latent", "vision_model.head.probe", "copy"
    yield f"{t}token_embedding.weight", "text_model.embeddings.token_embedding.weight", "copy"
    yield f"{t}positional_embedding", "text_model.embeddings.position_embedding.weight", "copy"
    yield "logit_scale", "logit_scale", "scalar"
    yield "logit_bias", "logit_bias", "scalar"


def _layers(state: Mapping[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def open_clip_to_siglip(
    model_cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(SiglipConfig keyword arguments, SiglipModel state dict)`` of an open_clip SigLIP checkpoint
    (a timm SigLIP ViT with attention pooling and open_clip's bidirectional text tower pooled at the
    last position); :class:`NotConvertibleError` naming what does not fit."""
    vision = dict(model_cfg.get("vision_cfg") or {})
    text = dict(model_cfg.get("text_cfg") or {})
    heads, tanh = _timm_facts(str(vision.get("timm_model_name") or ""))
    _check(vision, "timm_pool", ("map",), "vision")
    _check(vision, "timm_proj", ("none", "", None), "vision")
    for key, allowed in (
        ("hf_model_name", (None, "")),
        ("no_causal_mask", (True,)),
        ("pool_type", ("last",)),
        ("proj_bias", (True,)),
        ("proj_type", ("linear",)),
        ("embed_cls", (False,)),
        ("ls_init_value", (None,)),
        ("block_type", (None, "default")),
        ("qk_norm", (False,)),
    ):
        _check(text, key, allowed, "text")
    if "multimodal_cfg" in model_cfg:
        raise NotConvertibleError("it has CoCa's text decoder")
    act = text.get("act_kwargs") or {}
    if set(act) - {"approximate"} or act.get("approximate", "none") not in ("none", "tanh"):
        raise NotConvertibleError(f"its text activation takes {act}")
    text_eps = float((text.get("norm_kwargs") or {}).get("eps", 1e-5))
    v_layers, t_layers = _layers(state, "visual.trunk.blocks."), _layers(state, "text.transformer.resblocks.")
    pairs = list(_pairs(v_layers, t_layers))
    needed = [k for k, _, _ in pairs if k != "logit_bias"]
    missing = [k for k in needed if k not in state]
    if missing or not v_layers or not t_layers:
        raise NotConvertibleError(f"its weights lack {missing[:3]} (not open_clip's SigLIP layout)")
    used = (
        {k for k, _, _ in pairs}
        | {"text.attn_mask"}
        | {f"visual.trunk.attn_pool.kv.{x}" for x in ("weight", "bias")}
    )
    extra = sorted(k for k in state if k not in used)
    if extra:
        raise NotConvertibleError(
            f"its weights hold {extra[:3]}, which transformers' SigLIP has no place for"
        )
    width = int(state["visual.trunk.patch_embed.proj.weight"].shape[0])
    patch = int(state["visual.trunk.patch_embed.proj.weight"].shape[-1])
    grid = int(state["visual.trunk.pos_embed"].shape[1])
    side = round(grid**0.5) * patch
    text_width = int(state["text.token_embedding.weight"].shape[1])
    embed_dim = int(state["text.text_projection.weight"].shape[0])
    if embed_dim != width:
        raise NotConvertibleError(f"its text projects to {embed_dim} while its image tower gives {width}")
    kwargs = {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": int(state["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0]),
            "num_hidden_layers": v_layers,
            "num_attention_heads": heads,
            "image_size": side,
            "patch_size": patch,
            "hidden_act": _ACTS[tanh],
            "layer_norm_eps": 1e-6,  # timm's SigLIP ViTs
        },
        "text_config": {
            "vocab_size": int(state["text.token_embedding.weight"].shape[0]),
            "hidden_size": text_width,
            "intermediate_size": int(state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "num_hidden_layers": t_layers,
            "num_attention_heads": int(text.get("heads", 8)),
            "max_position_embeddings": int(state["text.positional_embedding"].shape[0]),
            "hidden_act": _ACTS[act.get("approximate") == "tanh"],
            "layer_norm_eps": text_eps,
            "projection_size": embed_dim,
        },
    }
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, how in pairs:
        if ours not in state:  # a model trained without a bias: SigLIP's is then 0
            out[theirs] = torch.zeros(())
            continue
        value = state[ours]
        if how == "qkv":
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[theirs % name] = part.clone()
        elif how == "kv":
            kv = state[ours.replace(".q.", ".kv.")]
            out[theirs] = torch.cat([value, kv], dim=0)
        elif how == "flat":
            out[theirs] = value.reshape(value.shape[-2], value.shape[-1]).clone()
        elif how == "scalar":
            out[theirs] = value.reshape(()).clone()
        else:
            out[theirs] = value
    return kwargs, out
