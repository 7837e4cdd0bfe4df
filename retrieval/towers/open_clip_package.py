"""Towers that run on the open_clip package, for open_clip architectures that do not convert to
transformers' CLIP (timm image towers such as SigLIP's, ResNets, CoCa, Hugging Face text towers).

Importing this module needs open_clip (``pip install 'siamese-retrieval[open_clip]'``); it builds
models with open_clip's own factory (``create_model('local-dir:…')`` on the checkpoint's config) and
reads weights with its ``load_checkpoint``, so every architecture open_clip knows is built as open_clip
builds it. The image tower is the model's ``visual`` module; the text tower is the model without it
(``encode_text``) with open_clip's own tokenizer. Saved towers keep ``open_clip_config.json``, the
processor and the tokenizer's files, so a saved model is rebuilt offline (with the package).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from PIL import Image
from torch import nn

from retrieval.config import ModelConfig
from retrieval.data.transforms import ProcessorTransform
from retrieval.io import atomic_write_text
from retrieval.towers.base import ImageTower, TextTower
from retrieval.towers.hf import _largest_module_list
from retrieval.towers.open_clip_files import OPEN_CLIP_CONFIG, OpenCLIPCheckpoint, image_processor_for

__all__ = ["OpenCLIPImageTower", "OpenCLIPTextTower", "build_package_tower", "package_parts"]

TOWER_FILE = "tower.json"


def _blocks_of(module: nn.Module) -> list[nn.Module]:
    """What partial unfreezing counts: the largest repeated stack (transformer blocks), else the
    module's children in order (a ResNet's stem, stages and pooling)."""
    try:
        return list(_largest_module_list(module)[1])
    except ValueError:
        return [child for child in module.children() if any(True for _ in child.parameters())]


def _offline_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``model_cfg`` that builds without downloading backbone weights (ours overwrite them)."""
    cfg = copy.deepcopy(model_cfg)
    if isinstance(cfg.get("vision_cfg"), dict):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if isinstance(cfg.get("text_cfg"), dict) and cfg["text_cfg"].get("hf_model_name"):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    return cfg


def _build(
    config: dict[str, Any], tokenizer_dir: Path | None, tokenizer: bool = True
) -> tuple[nn.Module, Any]:
    """open_clip's model (random weights) and tokenizer (``None`` unless ``tokenizer``) for an
    ``open_clip_config.json`` content."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = {
            "model_cfg": _offline_config(config["model_cfg"]),
            "preprocess_cfg": config.get("preprocess_cfg", {}),
        }
        (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(data), encoding="utf-8")
        if tokenizer_dir is not None:
            for file in tokenizer_dir.iterdir():
                if (
                    file.is_file()
                    and file.suffix in (".json", ".txt", ".model")
                    and file.name != OPEN_CLIP_CONFIG
                ):
                    shutil.copy(file, folder / file.name)
        model = open_clip.create_model(f"local-dir:{folder}", pretrained=None)
        text_cfg = config["model_cfg"].get("text_cfg") or {}
        if not tokenizer:
            return model.float().eval(), None
        if tokenizer_dir is None and text_cfg.get("hf_tokenizer_name"):
            from open_clip.tokenizer import HFTokenizer

            tokenizer = HFTokenizer(
                text_cfg["hf_tokenizer_name"],
                context_length=text_cfg.get("context_length", 77),
                **(text_cfg.get("tokenizer_kwargs") or {}),
            )
        else:
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.float().eval(), tokenizer


def _text_half(model: nn.Module) -> nn.Module:
    """The model without its image tower and temperature (the text tower's share of the weights)."""
    model.visual = nn.Identity()
    for name in ("logit_scale", "logit_bias"):
        if name in model._parameters:
            del model._parameters[name]
    return model


class OpenCLIPImageTower(ImageTower):
    """An open_clip model's image tower (``visual``), features ``[B, embed_dim]`` already projected."""

    def __init__(
        self, visual: nn.Module, processor: Any, output_dim: int, config: dict[str, Any], source: str
    ) -> None:
        super().__init__()
        self.visual = visual
        self.processor = processor
        self.output_dim = int(output_dim)
        self.open_clip_config = config
        self.source = source
        self._blocks = _blocks_of(visual)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixel_values)
        return out[0] if isinstance(out, tuple) else out  # [B, D] (CoCa: the pooled latent)

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        return ProcessorTransform(self.processor, train=train)

    def preprocess_config(self) -> dict[str, Any]:
        return {"kind": "open_clip", **ProcessorTransform(self.processor).config()}

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def save_assets(self, directory: Path) -> None:
        _save_config(directory, self.open_clip_config, self.source)
        self.processor.save_pretrained(directory)


class OpenCLIPTextTower(TextTower):
    """An open_clip model's text tower (``encode_text``) with open_clip's tokenizer (fixed-length ids)."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, output_dim: int, config: dict[str, Any], source: str
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.output_dim = int(output_dim)
        self.open_clip_config = config
        self.source = source
        text_cfg = config["model_cfg"].get("text_cfg") or {}
        self.pad_id = int(text_cfg.get("pad_id", 0))
        self._blocks = _blocks_of(model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("tokenize expects a list of strings, e.g. ['a red car']")
        input_ids = self.tokenizer(list(texts)).long()  # [B, context_length]
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_id).long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)  # [B, D]

    def preprocess_config(self) -> dict[str, Any]:
        inner = getattr(self.tokenizer, "tokenizer", None)
        vocab = sorted(inner.get_vocab().items()) if hasattr(inner, "get_vocab") else None
        return {
            "kind": "open_clip_tokenizer",
            "tokenizer": type(self.tokenizer).__name__,
            "context_length": int(getattr(self.tokenizer, "context_length", 0) or 0),
            "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest() if vocab else None,
        }

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def save_assets(self, directory: Path) -> None:
        _save_config(directory, self.open_clip_config, self.source)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(str(directory))


def _save_config(directory: Path, config: dict[str, Any], source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / OPEN_CLIP_CONFIG, json.dumps(config, indent=2) + "\n")
    atomic_write_text(directory / TOWER_FILE, json.dumps({"source": source}, indent=2) + "\n")


def _processor(config: dict[str, Any], model: nn.Module) -> Any:
    size = getattr(model.visual, "image_size", None) or config["model_cfg"]["vision_cfg"].get(
        "image_size", 224
    )
    size = size[0] if isinstance(size, (list, tuple)) else size
    return image_processor_for(config.get("preprocess_cfg") or {}, int(size))


def package_parts(
    checkpoint: OpenCLIPCheckpoint, state: dict[str, torch.Tensor], name: str
) -> tuple[ModelConfig, ImageTower, TextTower, float, float | None]:
    """:func:`retrieval.towers.open_clip.load_open_clip` for architectures that run on open_clip."""
    config = {"model_cfg": checkpoint.model_cfg, "preprocess_cfg": checkpoint.preprocess_cfg}
    model, tokenizer = _build(config, checkpoint.tokenizer_dir)
    open_clip.load_checkpoint(model, str(checkpoint.weights), strict=True)
    scale = float(model.logit_scale.detach().reshape(-1)[0])
    bias_param = getattr(model, "logit_bias", None)
    bias = float(bias_param.detach().reshape(-1)[0]) if isinstance(bias_param, torch.Tensor) else None
    embed_dim = int(checkpoint.model_cfg.get("embed_dim", 512))
    context = int(
        getattr(tokenizer, "context_length", 0)
        or (checkpoint.model_cfg.get("text_cfg") or {}).get("context_length", 77)
    )
    processor = _processor(config, model)
    image = OpenCLIPImageTower(model.visual, processor, embed_dim, config, name)
    text = OpenCLIPTextTower(_text_half(model), tokenizer, embed_dim, config, name)
    model_config = ModelConfig(
        image_tower=f"open_clip:{name}",
        text_tower=f"open_clip:{name}",
        embed_dim=embed_dim,
        projection="none",
        pooling="pooler",
        context_length=context,
        use_bias=bias is not None,
        init_logit_scale=scale,
        init_logit_bias=bias if bias is not None else -10.0,
    )
    return model_config, image, text, scale, bias


def build_package_tower(kind: str, assets: Path | None) -> ImageTower | TextTower:
    """The image or text tower of a saved model, rebuilt from its ``assets`` (weights follow)."""
    if assets is None:
        raise ValueError(
            "an open_clip tower is built from a checkpoint: load it with load_model('hf-hub:…' or "
            "'open_clip:ARCH/TAG' or a file) and fine-tune that model (--init)"
        )
    config = json.loads((assets / OPEN_CLIP_CONFIG).read_text(encoding="utf-8"))
    source = json.loads((assets / TOWER_FILE).read_text(encoding="utf-8")).get("source", str(assets))
    has_tokenizer = any(
        (assets / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    )
    model, tokenizer = _build(config, assets if has_tokenizer else None, tokenizer=kind == "text")
    embed_dim = int(config["model_cfg"].get("embed_dim", 512))
    if kind == "image":
        from transformers import AutoImageProcessor

        return OpenCLIPImageTower(
            model.visual, AutoImageProcessor.from_pretrained(str(assets)), embed_dim, config, source
        )
    return OpenCLIPTextTower(_text_half(model), tokenizer, embed_dim, config, source)
