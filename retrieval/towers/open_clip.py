"""open_clip checkpoints as toolkit towers.

A checkpoint is open_clip's model config (``open_clip_config.json``: ``{"model_cfg": ...,
"preprocess_cfg": ...}``, as open_clip's hub uploads and ``local-dir:`` folders hold it), a weight file
(``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, or a training checkpoint ``*.pt``
with its ``state_dict``) and, usually, tokenizer files.

Models of the ViT CLIP layout (OpenAI's and LAION's ViT-B/32, B/16, L/14, H/14 ...) are converted to
a transformers ``CLIPModel`` (:mod:`retrieval.towers.open_clip_layout`), and SigLIPs (timm's SigLIP
ViTs with open_clip's text tower) to a ``SiglipModel`` (:mod:`retrieval.towers.open_clip_siglip`),
without the open_clip package, so they load, fine-tune, save and export like any transformers
model. Other architectures (other timm towers, ResNets, CoCa, Hugging Face text towers) run on the
open_clip package itself (:mod:`retrieval.towers.open_clip_package`): the optional extra
``pip install 'siamese-retrieval[open_clip]'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from retrieval.config import ModelConfig
from retrieval.towers.base import ImageTower, TextTower
from retrieval.towers.open_clip_layout import (
    NotConvertibleError,
    clip_config_from_open_clip,
    open_clip_to_clip_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_EXTRA",
    "OpenCLIPCheckpoint",
    "find_weights",
    "image_processor_for",
    "load_open_clip",
    "open_clip_package",
    "read_state_dict",
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


def _why_not() -> str:
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
            f"tokenizer, whose vocabulary ships with the open_clip package ({_why_not()}): {OPEN_CLIP_EXTRA}, "
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
            f"runs on the open_clip package, which {_why_not()}: {OPEN_CLIP_EXTRA}"
        )
    from retrieval.towers.open_clip_package import package_parts

    return package_parts(checkpoint, state, name)
