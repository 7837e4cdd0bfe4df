"""Pairs in: manifest / image-folder / webdataset readers, safe image decoding, transforms, datasets."""

from __future__ import annotations

from retrieval.data.dataset import PairDataset, collate_pairs
from retrieval.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image, tar_ref
from retrieval.data.readers import Pair, PairSet, read_pairs
from retrieval.data.transforms import ImageTransform, ProcessorTransform

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "ImageTransform",
    "Pair",
    "PairDataset",
    "PairSet",
    "ProcessorTransform",
    "collate_pairs",
    "load_image",
    "read_pairs",
    "tar_ref",
]
