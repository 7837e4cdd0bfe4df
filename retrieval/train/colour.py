"""The colour histogram is built for training images that have colour.

The EfficientNet-Lite towers of the default recipe append a colour histogram to their features
(``ModelConfig.colour_levels``, :mod:`retrieval.towers.colour`). On images with colour it is what
tells "dark skin tone" from "light skin tone" (OpenMoji, 8 levels: validation mean recall 0.377 ->
0.405, test text->image R@10 with hubness correction 0.604 -> 0.687, mean of two seeds); on greyscale images it
can only describe grey levels, which the tower's own features describe already, and (6 levels) it cost
the Material Design icons validation recall (0.473 -> 0.458) and test recall
(benchmarks/results/adaptation_levers.md). So before a model is built, a sample of the training images
is looked at, and when (almost) none of their pixels has colour the tower is built without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.data.images import ImageDecodeError, load_image

logger = logging.getLogger(__name__)

__all__ = ["CHROMA", "MIN_COLOURED", "SAMPLE", "coloured_share", "model_config_for_images"]

SAMPLE = 200  # training images looked at, spread evenly over the set
CHROMA = 24  # a pixel has colour when its channels differ by more than this (of 255)
MIN_COLOURED = 0.01  # below this share of coloured pixels, the images count as greyscale


def coloured_share(images: Sequence[str], sample: int = SAMPLE) -> tuple[float, int]:
    """``(share of coloured pixels, images read)`` over up to ``sample`` of ``images`` spread evenly
    over the list (deterministic), each reduced to at most 64 px a side. Images that cannot be read
    are left out (training reports them); ``(0.0, 0)`` when none could be read."""
    if not images:
        return 0.0, 0
    count = min(sample, len(images))
    picks = sorted({int(i * len(images) / count) for i in range(count)})
    coloured = total = read = 0
    for index in picks:
        try:
            image = load_image(images[index], reduce_to=64)
        except ImageDecodeError:
            continue
        image.thumbnail((64, 64))
        pixels = np.asarray(image, dtype=np.int16)  # [h, w, 3]
        chroma = pixels.max(axis=-1) - pixels.min(axis=-1)  # [h, w]
        coloured += int((chroma > CHROMA).sum())
        total += int(chroma.size)
        read += 1
    return (coloured / total if total else 0.0), read


def model_config_for_images(config: Any, images: Sequence[str]) -> Any:
    """``config`` (a :class:`~retrieval.config.ModelConfig`) as the model for ``images`` is built: with
    ``colour_levels=0`` when the config asks for a colour histogram on an EfficientNet-Lite tower
    and the sampled training images are greyscale; unchanged otherwise (the decision is logged)."""
    if not config.colour_levels or not config.image_tower.startswith("efficientnet-"):
        return config
    share, read = coloured_share(images)
    if read == 0 or share >= MIN_COLOURED:
        return config
    logger.info(
        "the training images are greyscale (%.2f%% of the pixels of %d sampled images have colour): the "
        "image tower is built without its colour histogram (model.colour_levels=0)",
        100.0 * share,
        read,
    )
    return config.replace(colour_levels=0)
