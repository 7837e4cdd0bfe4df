"""Corpora in: one reader for manifests, tables, image folders, webdataset shards and the benchmark
caption files; records (pairs, images alone, captions alone); safe image decoding; transforms; datasets."""

from __future__ import annotations

from retrieval.data.dataset import PairDataset, collate_pairs
from retrieval.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image, tar_ref
from retrieval.data.readers import ReadOptions, read_corpus, read_pairs
from retrieval.data.records import Corpus, EmptyCorpusError, Pair, PairSet, Record, Skip, UnpairedCorpusError
from retrieval.data.refs import row_ref
from retrieval.data.shards import expand_braces
from retrieval.data.transforms import ImageTransform, ProcessorTransform

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Corpus",
    "EmptyCorpusError",
    "ImageDecodeError",
    "ImageTransform",
    "Pair",
    "PairDataset",
    "PairSet",
    "ProcessorTransform",
    "ReadOptions",
    "Record",
    "Skip",
    "UnpairedCorpusError",
    "collate_pairs",
    "expand_braces",
    "load_image",
    "read_corpus",
    "read_pairs",
    "row_ref",
    "tar_ref",
]
