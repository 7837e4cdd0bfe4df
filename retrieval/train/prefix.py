"""A partly trained image tower on cached prefix outputs: the locked stages run once per image.

When only the last parts of a pretrained image tower train (partial adaptation: the head conv and
the last stages of EfficientNet-Lite), everything before them is locked, so its output for an
image never changes: it is computed once, before training, and every step runs only the trained
suffix and the heads on it. The locked prefix's output is stored in the shared feature cache
(:class:`~retrieval.encoding.FeatureCache`) under its own namespace,

    namespace(prefix fingerprint, transform),  prefix fingerprint = the prefix's class, split, weights

(:func:`retrieval.towers.base.prefix_fingerprint`), so a second run on the same images, with
another seed or another suffix trained, reads it instead of running the prefix again.

Images are not augmented here: augmenting pixels would mean running the locked prefix every
step. BatchNorm layers of the suffix keep their statistics frozen (ImageNet's, or recomputed on
the training images once before adaptation: :func:`recompute_batchnorm`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from retrieval import encoding
from retrieval.data.images import ImageDecodeError, read_ref_bytes
from retrieval.encoding.feature_cache import content_hash, entry_key, namespace
from retrieval.towers.base import prefix_fingerprint, tower_split

logger = logging.getLogger(__name__)

__all__ = [
    "PrefixImageFeatures",
    "encode_prefix_rows",
    "features_through_prefix",
    "planned_split",
    "recompute_batchnorm",
    "tower_split",
]

PREFIX_BATCH = 32  # images per forward pass of the locked prefix
THROUGH_PREFIX_CHUNK = 512  # images whose prefix rows are held at once by features_through_prefix
PREFIX_SHARE_OF_CACHE = 0.5  # the heads phase stores prefix rows only when they fill at most this share


def planned_split(config: Any, model: Any, n_images: int) -> int | None:
    """The split the adaptation phase of this run will cache the locked prefix at, when the heads
    phase should compute the locked image tower's features through that prefix (then the prefix's
    output is in the feature cache when adaptation starts, and the tower ran once, not twice); else
    None. It applies when the run adapts (``adapt_image_layers``), uses the feature cache, the image
    tower is locked and splits, and the prefix rows of ``n_images`` images fill at most
    :data:`PREFIX_SHARE_OF_CACHE` of the cache (larger sets would evict them before adaptation)."""
    from retrieval.encoding.feature_cache import default_max_bytes

    layers = int(getattr(config, "adapt_image_layers", 0) or 0)
    tower = getattr(model, "image_tower", None)
    if layers <= 0 or not getattr(config, "feature_cache", False):
        return None
    if tower is None or getattr(model.config, "shared", False):
        return None
    if any(p.requires_grad for p in tower.parameters()):
        return None
    if not hasattr(tower, "blocks"):  # a tower without a prefix of its own fails the probe below
        return None
    split = len(tower.blocks()) - layers  # lock() unfreezes the last `layers` blocks: the first that trains
    if split < 1:
        return None
    size = int(getattr(tower, "image_size", 0) or 0)
    if size <= 0:
        return None
    was_training = tower.training
    tower.eval()
    try:
        with torch.inference_mode():  # the width of a prefix row, from one blank image
            width = tower.encode_prefix(torch.zeros(1, 3, size, size), split).shape[1]
    except (NotImplementedError, RuntimeError, ValueError):  # a tower whose prefix cannot run alone
        return None
    finally:
        tower.train(was_training)
    if n_images * width * 4 > PREFIX_SHARE_OF_CACHE * default_max_bytes():
        return None
    return split


def features_through_prefix(
    model: Any,
    images: Sequence[str],
    split: int,
    device: torch.device,
    batch_size: int = 128,
    *,
    feature_cache: Any,
    runtime: str = "torch",
) -> tuple[Tensor, list[int], dict[str, str]]:
    """``(features [n_ok, F] float32 CPU, positions of the readable images, {ref: why} of the others)``:
    the locked image tower's output, as :func:`retrieval.encoding.encode_image_features` gives it, computed
    as its locked prefix (:func:`encode_prefix_rows`, whose rows go to ``feature_cache`` for the
    adaptation phase) followed by the suffix on torch; the features go to the cache under the whole
    tower's name too, so ``embed`` and ``eval`` of the same images read them. Images already there are
    read, not computed. Prefix rows are held :data:`THROUGH_PREFIX_CHUNK` images at a time."""
    from retrieval.encoding.towers import fingerprint

    tower = model.image_tower
    transform = model.image_transform(False)
    space = namespace(fingerprint(model, "image"), transform.config())
    keys = _keys(images, space)
    found = feature_cache.get_many([k for k in keys if k is not None])
    todo = [i for i, key in enumerate(keys) if key is None or key not in found]
    computed: dict[int, np.ndarray] = {}
    broken: dict[str, str] = {}
    was_training = tower.training
    tower.eval()
    try:
        for start in range(0, len(todo), THROUGH_PREFIX_CHUNK):
            chunk = todo[start : start + THROUGH_PREFIX_CHUNK]
            refs = [images[i] for i in chunk]
            rows, kept, missing = encode_prefix_rows(
                model, refs, split, device, batch_size, feature_cache=feature_cache, runtime=runtime
            )
            broken.update(missing)
            stored = []
            with torch.inference_mode():
                for first in range(0, len(kept), batch_size):
                    part = rows[first : first + batch_size].to(device)  # [b, P]
                    features = tower.forward_suffix(part, split).float().cpu().numpy()  # [b, F]
                    for row, at in zip(features, kept[first : first + batch_size]):
                        position = chunk[at]
                        computed[position] = row.copy()
                        if keys[position] is not None:
                            stored.append((keys[position], computed[position]))
            feature_cache.put_many(stored)
    finally:
        tower.train(was_training)
    kept_all = [i for i in range(len(images)) if i in computed or (keys[i] is not None and keys[i] in found)]
    feature_cache.hits += len(images) - len(todo)
    feature_cache.misses += len(todo)
    if not kept_all:
        return torch.empty(0, int(getattr(tower, "output_dim", 0))), [], broken
    out = np.stack([computed[i] if i in computed else found[keys[i]] for i in kept_all])  # [n_ok, F]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)), kept_all, broken


class _Prefix(nn.Module):
    """The locked prefix of an image tower as a module of its own (what ONNX export traces)."""

    def __init__(self, tower: Any, split: int) -> None:
        super().__init__()
        self.tower, self.split = tower, split

    def forward(self, pixel_values: Tensor) -> Tensor:  # [B, 3, H, W] -> [B, P]
        return self.tower.encode_prefix(pixel_values, self.split)

    def image_transform(self, train: bool = False) -> Any:
        return self.tower.image_transform(train)

    def preprocess_config(self) -> dict[str, Any]:
        return self.tower.preprocess_config()


_RUNNERS: dict[str, Any] = {}  # prefix fingerprint -> ONNX Runtime runner (sessions are reused)


def _prefix_runner(model: Any, split: int, fingerprint: str, runtime: str, device: torch.device) -> Any:
    """The locked prefix on ONNX Runtime (exported once into the cache, keyed by its fingerprint) when
    ``runtime`` picks it on ``device`` (see :mod:`retrieval.encoding.towers`), else None (torch)."""
    from retrieval.encoding.towers import ONNX_DIR, TowerRunner, check_runtime
    from retrieval.export.onnx import (
        ExportError,
        export_tower,
        graph_folder,
        onnxruntime_available,
        read_graph,
    )
    from retrieval.paths import cache_dir

    if check_runtime(runtime) == "torch" or device.type != "cpu":
        return None
    if not onnxruntime_available():
        if runtime == "onnx":
            raise ImportError("runtime='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx")
        return None
    if fingerprint not in _RUNNERS:
        folder = graph_folder(cache_dir(ONNX_DIR), "image", fingerprint)
        graph = read_graph(folder, "image", fingerprint)
        try:
            if graph is None:
                graph = export_tower(_Prefix(model.image_tower, split), "image", folder, fingerprint)
            _RUNNERS[fingerprint] = TowerRunner(graph, "image", "cpu")
        except (ExportError, OSError) as exc:
            logger.warning("the image tower's locked prefix runs on torch (%s)", exc)
            _RUNNERS[fingerprint] = None
    return _RUNNERS[fingerprint]


def _keys(images: Sequence[str], space: bytes) -> list[bytes | None]:
    keys: list[bytes | None] = []
    for ref in images:
        try:
            keys.append(entry_key(space, content_hash(read_ref_bytes(ref))))
        except ImageDecodeError:
            keys.append(None)  # decoding reports it below
    return keys


def encode_prefix_rows(
    model: Any,
    images: Sequence[str],
    split: int,
    device: torch.device,
    batch_size: int = 128,
    *,
    feature_cache: Any = None,
    runtime: str = "torch",
) -> tuple[Tensor, list[int], dict[str, str]]:
    """``(rows [n_ok, P] float32 CPU, positions of the readable images, {ref: why} of the others)``:
    the image tower's locked prefix before ``split`` on every image (eval transform), read from
    ``feature_cache`` (a :class:`~retrieval.encoding.FeatureCache` or None) when it has them and
    added to it otherwise. The prefix runs on ``runtime`` (ONNX Runtime under "auto" on the CPU)."""
    tower = model.image_tower
    transform = model.image_transform(False)
    fingerprint = prefix_fingerprint(tower, split)
    space = namespace(fingerprint, transform.config())
    keys = _keys(images, space) if feature_cache is not None else [None] * len(images)
    found = feature_cache.get_many([k for k in keys if k is not None]) if feature_cache is not None else {}
    todo = [i for i, key in enumerate(keys) if key is None or key not in found]
    computed: dict[int, np.ndarray] = {}
    broken: dict[str, str] = {}
    if todo:
        runner = _prefix_runner(model, split, fingerprint, runtime, device)
        refs = [images[i] for i in todo]
        # small batches: the prefix's activations at full resolution dominate memory (ONNX Runtime keeps
        # its peak allocation for the session's life)
        batches = encoding.decoded_batches(refs, transform, min(batch_size, PREFIX_BATCH), skip_broken=True)
        was_training = tower.training
        tower.eval()
        try:
            for positions, pixels, skipped in batches:
                for skip in skipped:
                    broken[refs[skip.position]] = skip.detail
                if pixels is None:
                    continue
                if runner is not None:
                    rows = runner(pixels).numpy()  # [b, P]
                else:
                    with torch.inference_mode():
                        rows = tower.encode_prefix(pixels.to(device), split).float().cpu().clone().numpy()
                stored = []
                for row, position in zip(rows, positions):
                    computed[todo[position]] = row
                    key = keys[todo[position]]
                    if key is not None:
                        stored.append((key, row))
                if feature_cache is not None and stored:
                    feature_cache.put_many(stored)
        finally:
            batches.close()
            tower.train(was_training)
    kept = [i for i in range(len(images)) if i in computed or (keys[i] is not None and keys[i] in found)]
    if not kept:
        return torch.empty(0, 0), [], broken
    out = np.stack([computed[i] if i in computed else found[keys[i]] for i in kept])  # [n_ok, P]
    if feature_cache is not None:
        feature_cache.hits += len(images) - len(todo)
        feature_cache.misses += len(todo)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)), kept, broken


class PrefixImageFeatures:
    """``image refs -> [B, D]`` unit image embeddings of a partly trained image tower: the cached
    output of its locked prefix (:func:`encode_prefix_rows`, once per unique image), then the trained
    suffix and the head (differentiable in both). The interface of
    :class:`~retrieval.train.frozen.FrozenImageFeatures` (``index``, ``broken``, ``__call__``), so
    batches, validation and hard-negative mining use it the same way."""

    def __init__(
        self,
        model: Any,
        images: Sequence[str],
        split: int,
        device: torch.device,
        batch_size: int = 128,
        *,
        feature_cache: Any = None,
        runtime: str = "torch",
    ) -> None:
        unique = sorted(set(images))
        self.split = int(split)
        rows, kept, self.broken = encode_prefix_rows(
            model, unique, self.split, device, batch_size, feature_cache=feature_cache, runtime=runtime
        )
        if not kept:
            raise ValueError("no training image could be decoded")
        self.index = {unique[i]: row for row, i in enumerate(kept)}
        self.features = rows.to(device)  # [U, P]
        logger.info(
            "cached the locked prefix of the image tower (before part %d, %d numbers per image) for %d "
            "unique images (%d unreadable)",
            self.split,
            rows.shape[1],
            len(self.index),
            len(self.broken),
        )

    def rows(self, keys: Sequence[str]) -> Tensor:
        ids = torch.tensor([self.index[k] for k in keys], device=self.features.device)  # [B]
        return self.features.index_select(0, ids)  # [B, P]

    def tower_features(self, model: Any, keys: Sequence[str]) -> Tensor:
        """The tower's output ``[B, F]`` (the suffix run on the cached prefix rows)."""
        return model.image_tower.forward_suffix(self.rows(keys), self.split)  # [B, F]

    def __call__(self, model: Any, keys: Sequence[str]) -> Tensor:
        return model.project_image(self.tower_features(model, keys))  # [B, D]


def recompute_batchnorm(model: Any, cache: PrefixImageFeatures, batch_size: int = 256) -> int:
    """Replace the running statistics of the BatchNorm layers after the split by those of the
    training images (AdaBN: Li et al. 2016, "Revisiting Batch Normalization For Practical Domain
    Adaptation"): one pass of the suffix over the cached prefix rows, no gradient, every image
    weighted alike. The layers then stay frozen with these statistics. Returns the layers updated."""
    tower = model.image_tower
    suffix = [*tower.blocks()[cache.split :], *tower.head()]
    norms = [m for unit in suffix for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    keys = sorted(cache.index, key=cache.index.__getitem__)
    try:
        with torch.no_grad():
            for start in range(0, len(keys), batch_size):
                cache.tower_features(model, keys[start : start + batch_size])
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)
    return len(norms)
