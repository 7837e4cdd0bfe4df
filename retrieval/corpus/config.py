"""Settings of the corpus tools, as frozen dataclasses that round-trip through JSON (like
:mod:`retrieval.config`, whose :class:`~retrieval.config.ConfigBase` they share); each default
lives here once and the command line offers the same fields (:mod:`retrieval.cli.options`).

Also the one check of a cosine threshold (:func:`check_cosine`) and of a fraction
(:func:`check_fraction`): every tool refuses a bad value the same way, naming it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from retrieval.config import ConfigBase

__all__ = [
    "DedupConfig",
    "ExportConfig",
    "LeakageConfig",
    "MapConfig",
    "ScoreConfig",
    "check_cosine",
    "check_fraction",
]

MODALITIES = ("images", "texts", "both")


def check_cosine(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a float cosine in [-1, 1] (``positive``: in (0, 1]); ``ValueError`` naming it
    otherwise. Vectors are unit-normalised, so their inner product is a cosine: nothing lies above 1."""
    low = "0 (excluded)" if positive else "-1"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a cosine between {low} and 1; received {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number > 1.0 or number < -1.0:
        raise ValueError(
            f"{name} must be a cosine between {low} and 1; received {value!r} (vectors are unit-normalised, "
            "so scores lie in [-1, 1])"
        )
    if positive and number <= 0.0:
        raise ValueError(
            f"{name} must be a cosine above 0 and at most 1; received {value!r}: at or below 0 almost "
            "every pair counts (near-duplicates usually lie above 0.9; estimate with --sample first)"
        )
    return number


def check_fraction(value: Any, name: str) -> float:
    """``value`` as a float in (0, 1]; ``ValueError`` naming it otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a fraction above 0 and at most 1; received {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ValueError(
            f"{name} must be a fraction above 0 and at most 1 (0.3 keeps the best 30 %); received {value!r}"
        )
    return number


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise ValueError(f"{type(config).__name__}.{name} must be >= 1; received {value!r}")


def _modality(config: Any) -> None:
    if config.modality not in (None, *MODALITIES):
        raise ValueError(
            f"{type(config).__name__}.modality must be one of {list(MODALITIES)} or None (what the "
            f"collection holds); received {config.modality!r}"
        )


@dataclasses.dataclass(frozen=True)
class DedupConfig(ConfigBase):
    """How :func:`retrieval.corpus.find_duplicates` finds near-duplicates in a collection."""

    threshold: float = 0.95  # cosine at or above which two items are near-duplicates (model-dependent)
    modality: str | None = (
        None  # "images" | "texts" | "both" (each apart); None: images when held, else texts
    )
    policy: str = "components"  # "components" (connected pairs) | "greedy" (keep-the-first, SemDeDup-like)
    keep: str = "first"  # which member stays: "first" (lowest id) | "largest" (pixels / characters) | FIELD
    k: int = 16  # neighbours each item asks the index for at first; doubled while all are above threshold
    max_k: int = 1024  # neighbours per item at most (an item with more is counted as saturated)
    batch_size: int = 2048  # items searched per call to the collection
    refine: int | None = None  # exact re-scoring factor of the index search (None: the collection's own)
    exact: bool = False  # brute force (blocked matrix products over every vector) instead of the index
    sample: int | None = None  # only estimate the duplicate rate from this many random items
    seed: int = 0  # which items a sample draws
    memory_items: int = 1_000_000  # above this many items the union-find parent array lives on disk
    progress: bool = True  # progress bar on a terminal

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"policy": ("components", "greedy")}

    def __post_init__(self) -> None:
        self._check_choices()
        _modality(self)
        check_cosine(self.threshold, "DedupConfig.threshold (--threshold)", positive=True)
        _positive(self, "k", "max_k", "batch_size", "refine", "sample", "memory_items")
        if self.max_k < self.k:
            raise ValueError(f"DedupConfig.max_k ({self.max_k}) must be >= k ({self.k})")
        if not isinstance(self.keep, str) or not self.keep:
            raise ValueError(
                f"DedupConfig.keep must be 'first', 'largest' or a metadata field; received {self.keep!r}"
            )


@dataclasses.dataclass(frozen=True)
class ScoreConfig(ConfigBase):
    """How :func:`retrieval.corpus.score_pairs` scores the image-caption pairs of a corpus."""

    batch_size: int = 64  # images or captions per forward pass
    num_workers: int = 2  # processes decoding images (0: a helper thread)
    device: str | None = None  # "cpu", "cuda", ...; None: cuda when available
    chunk_size: int = 4096  # pairs per committed shard (about): the unit of work kept after an interruption
    keep_above: float | None = None  # keep the pairs whose cosine is at least this
    keep_top_fraction: float | None = None  # keep this share of the pairs, best first
    bins: int = 50  # bars of the histogram plot
    progress: bool = True  # progress bar on a terminal
    image_column: str = "image"  # manifest column with the image (path or bytes)
    caption_column: str = "caption"  # manifest column with the caption(s)
    id_column: str | None = None  # manifest column naming the image (default: its path)
    split: str | None = None  # only rows of this split
    image_root: str | None = None  # folder relative image paths start from (default: the manifest's)

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "chunk_size", "bins")
        if self.num_workers < 0:
            raise ValueError(f"ScoreConfig.num_workers must be >= 0; received {self.num_workers!r}")
        if self.keep_above is not None and self.keep_top_fraction is not None:
            raise ValueError(
                "give either ScoreConfig.keep_above (--keep-above) or keep_top_fraction (--keep-top-fraction), "
                f"not both; received {self.keep_above!r} and {self.keep_top_fraction!r}"
            )
        if self.keep_above is not None:
            check_cosine(self.keep_above, "ScoreConfig.keep_above (--keep-above)")
        if self.keep_top_fraction is not None:
            check_fraction(self.keep_top_fraction, "ScoreConfig.keep_top_fraction (--keep-top-fraction)")

    @property
    def filters(self) -> bool:
        """Whether a filtered manifest is asked for."""
        return self.keep_above is not None or self.keep_top_fraction is not None

    def read_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`retrieval.data.read_corpus`."""
        return {
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "id_column": self.id_column,
            "split": self.split,
            "image_root": self.image_root,
        }


@dataclasses.dataclass(frozen=True)
class ExportConfig(ConfigBase):
    """How :func:`retrieval.corpus.export_subset` cuts a subset of a collection by query."""

    format: str = "folder"  # "folder" (images + metadata.jsonl) | "parquet" | "webdataset"
    k: int | None = None  # best items per query (None: 100 unless a threshold is given)
    threshold: float | None = None  # every item whose cosine to a query is at least this
    modality: str | None = None  # "images" | "texts" | "both"; None: images when held, else texts
    max_k: int = 16384  # with a threshold: items per query at most (more are counted as saturated)
    shard_size: int = 10_000  # items per webdataset shard / Parquet file
    overwrite: bool = False  # replace an existing output folder
    device: str | None = None  # where queries are encoded
    progress: bool = True  # progress bar on a terminal

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"format": ("folder", "parquet", "webdataset")}
    DEFAULT_K: ClassVar[int] = 100

    def __post_init__(self) -> None:
        self._check_choices()
        _modality(self)
        _positive(self, "k", "max_k", "shard_size")
        if self.k is not None and self.threshold is not None:
            raise ValueError(
                f"give either ExportConfig.k (-k) or threshold (--threshold), not both; received {self.k!r} "
                f"and {self.threshold!r}"
            )
        if self.threshold is not None:
            check_cosine(self.threshold, "ExportConfig.threshold (--threshold)")


@dataclasses.dataclass(frozen=True)
class LeakageConfig(ConfigBase):
    """How :func:`retrieval.corpus.check_leakage` looks for test images duplicated in the training data."""

    threshold: float = 0.95  # cosine at or above which a test image counts as a copy of a training one
    examples: int = 20  # leaked test images listed (most similar first)
    ks: tuple[int, ...] = (1, 5, 10)  # cutoffs of the recall measured with and without leaked queries
    batch_size: int = 64  # images or captions per forward pass
    chunk_size: int = 4096  # training images compared with the test images at a time
    device: str | None = None  # "cpu", "cuda", ...; None: cuda when available
    progress: bool = True  # progress bars on a terminal
    image_column: str = "image"  # manifest column with the image (both sources)
    caption_column: str = "caption"  # manifest column with the caption(s)
    id_column: str | None = None  # manifest column naming the image (default: its path)
    image_root: str | None = None  # folder relative image paths start from (default: each manifest's)

    def __post_init__(self) -> None:
        check_cosine(self.threshold, "LeakageConfig.threshold (--threshold)", positive=True)
        _positive(self, "batch_size", "chunk_size")
        if int(self.examples) < 0:
            raise ValueError(f"LeakageConfig.examples must be >= 0; received {self.examples!r}")

    def read_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`retrieval.data.read_corpus`."""
        return {
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "id_column": self.id_column,
            "image_root": self.image_root,
        }


@dataclasses.dataclass(frozen=True)
class MapConfig(ConfigBase):
    """How :func:`retrieval.corpus.draw_map` draws a 2-D map of a collection."""

    sample: int = 100_000  # items drawn at most (a seeded uniform sample)
    modality: str | None = None  # "images" | "texts" | "both"; None: everything the collection holds
    color_by: str | None = None  # metadata field giving each point its colour (None: the modality)
    method: str = "auto"  # "auto" (UMAP when umap-learn is installed, else PCA) | "umap" | "pca"
    seed: int = 0  # the sample and the projection
    thumbnail_px: int = 64  # side of the thumbnails shown on hover
    thumbnail_bytes: int = 16_000_000  # thumbnails embedded in the page at most (bytes of data URIs)
    max_categories: int = 20  # colours of a categorical field; the other values are drawn grey
    png_px: int = 1600  # width and height of the PNG
    progress: bool = True  # progress bar on a terminal

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"method": ("auto", "umap", "pca")}

    def __post_init__(self) -> None:
        self._check_choices()
        _modality(self)
        _positive(self, "sample", "thumbnail_px", "max_categories", "png_px")
        if int(self.thumbnail_bytes) < 0:
            raise ValueError(f"MapConfig.thumbnail_bytes must be >= 0; received {self.thumbnail_bytes!r}")
