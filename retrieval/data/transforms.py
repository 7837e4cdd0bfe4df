"""Image transforms written with PIL + torch: resize, centre crop, normalise; light training augmentation.

``ImageTransform`` serves the from-scratch towers; ``ProcessorTransform`` wraps a transformers
image processor so pretrained towers see exactly the preprocessing they were trained with.
Both bound their work by their output, whatever the input's shape (:func:`cap_aspect`).
Both are picklable (DataLoader workers) and draw randomness from torch's global generator, so
``torch.manual_seed`` makes augmentation reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` box covering ``scale`` of the area with aspect in ``ratio``
    (the Inception-style crop of Szegedy et al. 2015); falls back to the central square-ish crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()))
            top = int(torch.randint(0, height - h + 1, ()))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def color_jitter(image: Image.Image, strength: float) -> Image.Image:
    """Random brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]``."""
    if strength <= 0:
        return image
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(_uniform(1 - strength, 1 + strength))
    return image


# Longest side / shortest side kept before an image is resized for a model. Resizing the shorter side
# of a 1 x 39,000 strip to 224 px would make a 224 x 8.7 M image (9 GB) before cropping it; cutting the
# strip to its central 1 x 64 first bounds that work by the output (at most 64 output squares), and
# leaves every image with an ordinary shape (up to 1:64) exactly as it was.
MAX_ASPECT = 64


def cap_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``image`` itself when its longer side is at most ``max_aspect`` times its shorter side, else
    the central part of the longer side that has that ratio (a crop: no resampling)."""
    width, height = image.size
    short = max(1, min(width, height))
    keep = max(1, math.floor(short * max_aspect))
    if width > keep:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


def resize_center_crop(image: Image.Image, size: int, resample: str = "bicubic") -> Image.Image:
    """Resize the shorter side to ``size`` and cut the central ``size x size`` square.

    Work and memory are bounded by the output: an image longer than :data:`MAX_ASPECT` times its
    width (or the reverse) is first cut to its central part of that ratio (:func:`cap_aspect`)."""
    image = cap_aspect(image)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), _RESAMPLE[resample])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(
    image: Image.Image, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    """RGB ``PIL.Image`` -> ``[3, H, W]`` float32 ``(pixel / 255 - mean) / std``.

    Computed in numpy: per-image tensors are small, and torch's intra-op threads only add
    synchronisation cost here (much more on a busy machine). The bytes are put in channel order
    first and converted once, then scaled and shifted in place (``pixel * a + b``): one float array
    and no temporaries, several times faster than converting and normalising the ``[H, W, 3]`` array."""
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # [H, W, 3] uint8
    std_ = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (std_ * 255.0)).astype(np.float32)[:, None, None]  # [3, 1, 1]
    shift = (-np.asarray(mean, dtype=np.float64) / std_).astype(np.float32)[:, None, None]  # [3, 1, 1]
    array = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)  # [3, H, W]
    array *= scale
    array += shift
    return torch.from_numpy(array)


class ImageTransform:
    """Resize + centre crop + normalise (eval), or random resized crop + colour jitter + normalise (train).

    The training crop keeps 80-100% of the area by default: on OpenMoji (the demo recipe) it matched or
    beat the usual (0.5, 1.0) on validation recall, and together with weight decay 0.3 did best."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool = False,
        resample: str = "bicubic",
        scale: tuple[float, float] = (0.8, 1.0),  # train crop area (emoji cut in half lose their meaning)
        jitter: float = 0.1,
    ) -> None:
        if resample not in _RESAMPLE:
            raise ValueError(f"unknown resample {resample!r}; expected one of {sorted(_RESAMPLE)}")
        self.size = int(size)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (R, G, B), std > 0; received {mean!r}, {std!r}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.train = train
        self.resample = resample
        self.scale = scale
        self.jitter = jitter

    def config(self) -> dict[str, Any]:
        """The preprocessing settings (what the model fingerprint records)."""
        return {
            "kind": "resize_center_crop",
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resample": self.resample,
        }

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB") if image.mode != "RGB" else image
        if self.train:
            box = random_resized_crop_box(*image.size, scale=self.scale)
            image = image.resize((self.size, self.size), _RESAMPLE[self.resample], box=box)
            image = color_jitter(image, self.jitter)
        else:
            image = resize_center_crop(image, self.size, self.resample)
        return to_tensor(image, self.mean, self.std)  # [3, S, S]

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, train={self.train})"


class ProcessorTransform:
    """A transformers image processor as a transform; training adds a random resized crop and jitter first."""

    def __init__(
        self,
        processor: Any,
        *,
        train: bool = False,
        scale: tuple[float, float] = (0.5, 1.0),
        jitter: float = 0.1,
    ) -> None:
        self.processor = processor
        self.train = train
        self.scale = scale
        self.jitter = jitter

    def config(self) -> dict[str, Any]:
        return {
            "kind": "processor",
            "processor": type(self.processor).__name__,
            **_processor_settings(self.processor),
        }

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB") if image.mode != "RGB" else image
        if self.train:
            image = image.crop(random_resized_crop_box(*image.size, scale=self.scale))
            image = color_jitter(image, self.jitter)
        # Processors that resize the shorter side would blow an extreme strip up before cropping it.
        image = cap_aspect(image)
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"]  # [1, 3, H, W]
        return pixel_values[0].to(torch.float32)

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__}, train={self.train})"


def _processor_settings(processor: Any) -> dict[str, Any]:
    keys = (
        "size",
        "crop_size",
        "do_center_crop",
        "do_resize",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "resample",
        "crop_pct",
    )
    settings: dict[str, Any] = {}
    for key in keys:
        value = getattr(processor, key, None)
        if value is None:
            continue
        if hasattr(value, "items"):
            value = {k: v for k, v in dict(value).items() if v is not None}
        elif isinstance(value, (list, tuple)):
            value = [float(v) for v in value]
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        settings[key] = value
    return settings
