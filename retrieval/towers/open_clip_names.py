"""open_clip's names: ``ARCH`` (a model config such as ``ViT-B-32``) and ``ARCH/TAG`` (its pretrained
weights, such as ``ViT-B-32/laion2b_s34b_b79k``), resolved to a config and a Hugging Face hub repo.

With the open_clip package installed, its own tables answer (every architecture and tag it knows).
Without it, a short table of the most used ViT CLIPs and SigLIPs answers, as open_clip's registry
states them (hub repos, QuickGELU for OpenAI's weights, SigLIP's preprocessing, and the model
configs of ``ViT-B-32``, ``ViT-B-16`` and ``ViT-L-14``; SigLIP repos carry their own config);
anything else asks for the package.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["arch_config", "pretrained_repo"]

_EXTRA = "pip install 'siamese-retrieval[open_clip]'"


def _vit(embed: int, layers: int, width: int, patch: int, text_width: int, text_heads: int) -> dict[str, Any]:
    return {
        "embed_dim": embed,
        "vision_cfg": {"image_size": 224, "layers": layers, "width": width, "patch_size": patch},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": text_heads,
            "layers": 12,
        },
    }


_ARCHS: dict[str, dict[str, Any]] = {
    "ViT-B-32": _vit(512, 12, 768, 32, 512, 8),
    "ViT-B-16": _vit(512, 12, 768, 16, 512, 8),
    "ViT-L-14": _vit(768, 24, 1024, 14, 768, 12),
}
_SIGLIP = {
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
    "resize_mode": "squash",
}
# (arch, tag) -> (hub repo, the tag's settings: QuickGELU for OpenAI's weights, SigLIP's preprocessing)
_TAGS: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("ViT-B-32", "openai"): ("timm/vit_base_patch32_clip_224.openai", {"quick_gelu": True}),
    ("ViT-B-32", "laion2b_s34b_b79k"): ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {}),
    ("ViT-B-16", "openai"): ("timm/vit_base_patch16_clip_224.openai", {"quick_gelu": True}),
    ("ViT-B-16", "laion2b_s34b_b88k"): ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", {}),
    ("ViT-L-14", "openai"): ("timm/vit_large_patch14_clip_224.openai", {"quick_gelu": True}),
    ("ViT-L-14", "laion2b_s32b_b82k"): ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", {}),
    # SigLIP (its repos hold their open_clip_config.json and tokenizer): Inception statistics, square resize
    ("ViT-B-16-SigLIP", "webli"): ("timm/ViT-B-16-SigLIP", _SIGLIP),
    ("ViT-L-16-SigLIP-384", "webli"): ("timm/ViT-L-16-SigLIP-384", _SIGLIP),
    ("ViT-SO400M-14-SigLIP", "webli"): ("timm/ViT-SO400M-14-SigLIP", _SIGLIP),
}


def _normalise(arch: str) -> str:
    return arch.replace("/", "-")  # open_clip accepts OpenAI's "ViT-B/32" for "ViT-B-32"


def _package() -> Any:
    from retrieval.towers.open_clip_files import open_clip_package

    return open_clip_package()


def arch_config(arch: str) -> dict[str, Any]:
    """open_clip's model config of ``arch`` (``-quickgelu`` names set ``quick_gelu``); ``ValueError``
    naming the known ones (and the extra that knows all of them) otherwise."""
    name = _normalise(arch)
    package = _package()
    if package is not None:
        config = package.get_model_config(name)
        if config is None:
            raise ValueError(
                f"open_clip knows no architecture {arch!r}: expected one of open_clip.list_models(), e.g. ViT-B-32"
            )
        return copy.deepcopy(config)
    base, quick = (name[: -len("-quickgelu")], True) if name.endswith("-quickgelu") else (name, False)
    if base not in _ARCHS:
        raise ValueError(
            f"open_clip architecture {arch!r} is not among those known without the open_clip package "
            f"({', '.join(sorted(_ARCHS))}): {_EXTRA}, or put its open_clip_config.json beside the weights"
        )
    config = copy.deepcopy(_ARCHS[base])
    if quick:
        config["quick_gelu"] = True
    return config


def pretrained_repo(arch: str, tag: str) -> tuple[str, dict[str, Any]]:
    """``(hub repo, settings)`` of open_clip's pretrained ``arch/tag``; the settings hold the tag's
    ``quick_gelu`` and preprocessing (mean, std, interpolation, resize_mode) when it states them."""
    name = _normalise(arch)
    package = _package()
    if package is not None:
        cfg = package.get_pretrained_cfg(name, tag)
        if not cfg or not cfg.get("hf_hub"):
            known = ", ".join(package.list_pretrained_tags_by_model(name)) or "none"
            raise ValueError(
                f"open_clip has no hub weights for {arch}/{tag}: its tags for {arch} are {known}"
            )
        settings = {
            k: cfg[k] for k in ("quick_gelu", "mean", "std", "interpolation", "resize_mode") if k in cfg
        }
        repo = "/".join(str(cfg["hf_hub"]).strip("/").split("/")[:2])  # "org/name[/file]"
        return repo, settings
    key = (name, tag)
    if key not in _TAGS:
        known = ", ".join(f"{a}/{t}" for a, t in sorted(_TAGS))
        raise ValueError(
            f"open_clip:{arch}/{tag} is not among the pretrained names known without the open_clip package "
            f"({known}): {_EXTRA}, or name its hub repo directly (hf-hub:ORG/NAME)"
        )
    repo, settings = _TAGS[key]
    return repo, dict(settings)
