"""open_clip checkpoints as toolkit towers.

A checkpoint is open_clip's model config (``open_clip_config.json``: ``{"model_cfg": ...,
"preprocess_cfg": ...}``, as open_clip's hub uploads and ``local-dir:`` folders hold it), a weight file
(``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, or a training checkpoint ``*.pt``
with its ``state_dict``) and, usually, tokenizer files (:mod:`retrieval.towers.open_clip_files`).

Models of the ViT CLIP layout (OpenAI's and LAION's ViT-B/32, B/16, L/14, H/14 ...) are converted to
a transformers ``CLIPModel`` (:mod:`retrieval.towers.open_clip_layout`), and SigLIPs (timm's SigLIP
ViTs with open_clip's text tower) to a ``SiglipModel`` (:mod:`retrieval.towers.open_clip_siglip`),
without the open_clip package, so they load, fine-tune, save and export like any transformers
model. Other architectures (other timm towers, ResNets, CoCa, Hugging Face text towers) run on the
open_clip package itself (:mod:`retrieval.towers.open_clip_package`): the optional extra
``pip install 'siamese-retrieval[open_clip]'``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from retrieval.config import ModelConfig
from retrieval.towers.base import ImageTower, TextTower
from retrieval.towers.open_clip_files import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_EXTRA,
    OPEN_CLIP_WEIGHTS,
    OpenCLIPCheckpoint,
    find_weights,
    image_processor_for,
    open_clip_package,
    read_state_dict,
    why_not_importable,
)
from retrieval.towers.open_clip_layout import (
    NotConvertibleError,
    clip_config_from_open_clip,
    open_clip_to_clip_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_EXTRA",
    "OPEN_CLIP_WEIGHTS",
    "OpenCLIPCheckpoint",
    "find_weights",
    "image_processor_for",
    "load_open_clip",
    "open_clip_package",
    "read_state_dict",
]


def _tokenizer(checkpoint: OpenCLIPCheckpoint, name: str) -> Any:
    """The checkpoint's tokenizer as a transformers tokenizer: its own files, the hub tokenizer its
    config names, or open_clip's CLIP BPE (needs the package, which ships the vocabulary)."""
    from transformers import AutoTokenizer

    if checkpoint.tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(str(checkpoint.tokenizer_dir))
    hf_name = (checkpoint.model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name")
    if hf_name:
        return AutoTokenizer.from_pretrained(hf_name)
    if open_clip_package() is None:
        raise ValueError(
            f"open_clip model {name} has no tokenizer files beside its weights and uses open_clip's own CLIP "
            f"tokenizer, whose vocabulary ships with the open_clip package ({why_not_importable()}): {OPEN_CLIP_EXTRA}, "
            "or put the tokenizer files (tokenizer.json, vocab.json, merges.txt) of "
            "openai/clip-vit-base-patch32 beside it"
        )
    return _clip_bpe_tokenizer(int(checkpoint.model_cfg["text_cfg"].get("context_length", 77)))


def _clip_bpe_tokenizer(context_length: int) -> Any:
    """transformers' ``CLIPTokenizer`` over the BPE vocabulary open_clip ships (the same merges and
    byte alphabet as OpenAI's CLIP: 256 bytes, their end-of-word forms, 48,894 merges, 2 specials)."""
    import gzip
    import importlib.resources
    import tempfile

    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    vocab_gz = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(vocab_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
        merges_file.write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
        )
        return CLIPTokenizer(
            str(vocab_file), str(merges_file), pad_token="<|endoftext|>", model_max_length=context_length
        )


def load_open_clip(
    checkpoint: OpenCLIPCheckpoint, name: str
) -> tuple[ModelConfig, ImageTower, TextTower, float, float | None]:
    """``(config, image tower, text tower, logit_scale, logit_bias)`` of an open_clip checkpoint, towers
    named ``"hf:<name>"``: converted to transformers' CLIP when the architecture is of the ViT CLIP
    layout, else (:class:`NotConvertibleError`) run on the open_clip package."""
    from retrieval.towers.hf import dual_encoder_parts

    state = read_state_dict(checkpoint.weights)
    try:
        tokenizer = _tokenizer(checkpoint, name)
        if (checkpoint.model_cfg.get("vision_cfg") or {}).get("timm_model_name"):
            full, bias = _as_siglip(checkpoint, state)
            tokenizer.model_input_names = ["input_ids"]  # open_clip's SigLIP text attends to padding too
            family = "siglip"
        else:
            full, bias = _as_clip(checkpoint, state, tokenizer)
            family = "clip"
        image_size = int(full.config.vision_config.image_size)
        processor = image_processor_for(checkpoint.preprocess_cfg, image_size, family=family)
    except NotConvertibleError as exc:
        logger.info("open_clip model %s does not convert to transformers (%s)", name, exc.reason)
        return _package_parts(checkpoint, state, name, exc.reason)
    return dual_encoder_parts(full.eval(), processor, tokenizer, name, logit_bias=bias)


def _load_converted(full: Any, converted: dict[str, torch.Tensor], name: str) -> None:
    target = full.state_dict()
    for key, value in converted.items():  # scalars: CLIP keeps [] where SigLIP keeps [1]
        if key in target and target[key].shape != value.shape and target[key].numel() == value.numel():
            converted[key] = value.reshape(target[key].shape)
    missing, unexpected = full.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:  # an internal mismatch of a layout table with transformers' model
        raise ValueError(
            f"open_clip model {name}: converted weights do not fit transformers' {type(full).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); report this with the model's config"
        )


def _as_clip(
    checkpoint: OpenCLIPCheckpoint, state: dict[str, torch.Tensor], tokenizer: Any
) -> tuple[Any, float | None]:
    from transformers import CLIPConfig, CLIPModel

    from retrieval.towers.hf import _skip_init

    kwargs = clip_config_from_open_clip(
        checkpoint.model_cfg, eos_token_id=getattr(tokenizer, "eos_token_id", None)
    )
    converted, bias = open_clip_to_clip_state(state)
    ids = (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.bos_token_id))
    kwargs["text_config"].update({k: v for k, v in ids if v is not None})
    with _skip_init():
        full = CLIPModel(CLIPConfig(**kwargs)).to(torch.float32)
    _load_converted(full, converted, "clip")
    return full, bias


def _as_siglip(checkpoint: OpenCLIPCheckpoint, state: dict[str, torch.Tensor]) -> tuple[Any, float | None]:
    from transformers import SiglipConfig, SiglipModel

    from retrieval.towers.hf import _skip_init
    from retrieval.towers.open_clip_siglip import open_clip_to_siglip

    kwargs, converted = open_clip_to_siglip(checkpoint.model_cfg, state)
    with _skip_init():
        full = SiglipModel(SiglipConfig(**kwargs)).to(torch.float32)
    _load_converted(full, converted, "siglip")
    return full, float(converted["logit_bias"].reshape(-1)[0])


def _package_parts(
    checkpoint: OpenCLIPCheckpoint, state: dict[str, torch.Tensor], name: str, reason: str
) -> tuple[ModelConfig, ImageTower, TextTower, float, float | None]:
    """Towers running on the open_clip package, for architectures outside the converted layouts."""
    if open_clip_package() is None:
        raise ValueError(
            f"open_clip model {name} is not of a layout the toolkit converts (ViT CLIP or SigLIP: {reason}); it "
            f"runs on the open_clip package, which {why_not_importable()}: {OPEN_CLIP_EXTRA}"
        )
    from retrieval.towers.open_clip_package import package_parts

    return package_parts(checkpoint, state, name)
