"""Images in, unit vectors (or tower features) out: decoding prepared ahead by a pool of threads or
DataLoader workers, features read from the feature cache when it has them, the tower run by torch or
ONNX Runtime (:mod:`retrieval.encoding.towers`), broken images skipped and reported or raised."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from retrieval.data.images import ImageDecodeError, load_image, read_ref_bytes, to_rgb
from retrieval.encoding import towers
from retrieval.encoding.batches import (
    IMAGE_BATCH_SIZE,
    LOADER_PREFETCH,
    Encoded,
    ImageInput,
    Skipped,
    black_box,
    check_batch_size,
    describe,
    empty,
    gather,
    progress_bar,
    unit,
)
from retrieval.encoding.feature_cache import FeatureCache, content_hash, entry_key, namespace
from retrieval.encoding.runtime import inference, prefetch
from retrieval.towers.base import prefix_fingerprint, tower_split

MAX_DECODE_THREADS = 8  # threads decoding one batch's images
CORES_PER_DECODE_THREAD = 4  # one decoding thread per this many cores (see decode_threads)


def decode_threads() -> int:
    """Threads that decode and transform images while the tower runs: one per
    :data:`CORES_PER_DECODE_THREAD` cores the process may use, at least 1, at most 8.

    The tower's forward pass already uses every core (torch's and ONNX Runtime's intra-op threads);
    decoding and resizing a small image costs a fraction of its forward pass (EfficientNet-Lite0 at
    224 px: ~5 ms of one core against ~17 ms of core time), so one thread per few cores keeps the
    forward pass fed, and more only compete with it for the same cores (on 2 cores a pool of two
    decoded slower than one thread; benchmarks/results/encode.md)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DECODE_THREADS, cores // CORES_PER_DECODE_THREAD))


@dataclasses.dataclass(frozen=True)
class _Lookup:
    """Feature cache access for one tower and transform (picklable: DataLoader workers get a copy)."""

    cache: FeatureCache
    space: bytes  # retrieval.encoding.feature_cache.namespace(tower fingerprint, transform)
    # a partly trained tower (adapted by training): where training left its locked prefix's rows
    prefix_space: bytes | None = None  # namespace(prefix fingerprint, transform)
    split: int | None = None


@dataclasses.dataclass
class _Prepared:
    """One batch made ready for the tower: cached features for some items, pixels for the others."""

    positions: list[int]  # items that will get a row, ascending
    pixels: torch.Tensor | None  # [m, 3, H, W] of the items to run through the tower
    pixel_rows: list[int]  # row (index in positions) of each pixels row
    cached: dict[int, np.ndarray]  # row -> cached features [F]
    keys: list[bytes | None]  # cache key of each pixels row (None: not cacheable)
    skipped: list[Skipped]
    prefix_rows: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # row -> cached prefix [P]
    prefix_keys: dict[int, bytes] = dataclasses.field(default_factory=dict)  # row -> features key


def _decode(
    position: int, item: ImageInput, transform: Callable[[Image.Image], Any], catch: bool, data: bytes | None
) -> tuple[torch.Tensor | None, Skipped | None]:
    """``(pixels [3, H, W], None)``, or ``(None, Skipped)`` for a broken input when ``catch``."""
    try:
        if isinstance(item, Image.Image):
            image = to_rgb(item)
        elif data is not None:
            try:
                image = load_image(data)
            except ImageDecodeError:
                image = load_image(item)  # the same failure, named after the item
        else:
            image = load_image(item)
    except ImageDecodeError as exc:
        if not catch:
            raise
        return None, Skipped(position, describe(item, position), "decode_error", str(exc))
    try:
        return transform(image), None
    except Exception as exc:  # a transform failing on a decoded image is a per-item problem
        if not catch:
            raise
        detail = f"{type(exc).__name__}: {exc}"
        return None, Skipped(position, describe(item, position), "transform_error", detail)


def _prepare(
    start: int,
    chunk: Sequence[ImageInput],
    transform: Callable[[Image.Image], Any],
    catch: bool,
    lookup: _Lookup | None,
    pool: ThreadPoolExecutor | None,
) -> _Prepared:
    """Read the chunk's bytes, take what the cache has, decode and transform the rest (in ``pool``)."""
    datas: list[bytes | None] = [None] * len(chunk)
    keys: list[bytes | None] = [None] * len(chunk)
    found: dict[bytes, np.ndarray] = {}
    prefixes: dict[int, np.ndarray] = {}  # j -> the locked prefix's cached row
    if lookup is not None:
        digests: dict[int, bytes] = {}
        for j, item in enumerate(chunk):
            if isinstance(item, Image.Image):
                continue
            try:
                datas[j] = read_ref_bytes(item)
            except ImageDecodeError:
                continue  # decoding reports it below
            digests[j] = content_hash(datas[j])  # type: ignore[arg-type]
            keys[j] = entry_key(lookup.space, digests[j])
        found = lookup.cache.get_many([k for k in keys if k is not None])
        if lookup.prefix_space is not None:  # only read: training writes prefix rows, encoding never does
            wanted = {
                j: entry_key(lookup.prefix_space, d) for j, d in digests.items() if keys[j] not in found
            }
            rows = lookup.cache.get_many(list(wanted.values())) if wanted else {}
            prefixes = {j: rows[key] for j, key in wanted.items() if key in rows}

    todo = [j for j in range(len(chunk)) if (keys[j] is None or keys[j] not in found) and j not in prefixes]

    def decode(j: int) -> tuple[torch.Tensor | None, Skipped | None]:
        return _decode(start + j, chunk[j], transform, catch, datas[j])

    decoded = dict(
        zip(todo, pool.map(decode, todo) if pool is not None and len(todo) > 1 else map(decode, todo))
    )
    positions: list[int] = []
    pixels: list[torch.Tensor] = []
    pixel_rows: list[int] = []
    pixel_keys: list[bytes | None] = []
    cached: dict[int, np.ndarray] = {}
    prefix_rows: dict[int, np.ndarray] = {}
    prefix_keys: dict[int, bytes] = {}
    skipped: list[Skipped] = []
    for j in range(len(chunk)):
        if j in prefixes:
            prefix_rows[len(positions)] = prefixes[j]
            prefix_keys[len(positions)] = keys[j]  # type: ignore[assignment]
        elif j in decoded:
            tensor, skip = decoded[j]
            if skip is not None:
                skipped.append(skip)
                continue
            pixel_rows.append(len(positions))
            pixels.append(tensor)  # type: ignore[arg-type]
            pixel_keys.append(keys[j])
        else:
            cached[len(positions)] = found[keys[j]]  # type: ignore[index]
        positions.append(start + j)
    stacked = torch.stack(pixels) if pixels else None  # [m, 3, H, W]
    return _Prepared(positions, stacked, pixel_rows, cached, pixel_keys, skipped, prefix_rows, prefix_keys)


def _as_is(batch: _Prepared) -> _Prepared:
    return batch


class _PreparedBatches:
    """torch Dataset of whole batches (DataLoader workers prepare one batch each)."""

    def __init__(
        self,
        items: Sequence[ImageInput],
        transform: Callable[..., Any],
        batch_size: int,
        catch: bool,
        lookup: _Lookup | None,
    ) -> None:
        self.items, self.transform, self.batch_size = items, transform, batch_size
        self.catch, self.lookup = catch, lookup

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __getitem__(self, b: int) -> _Prepared:
        start = b * self.batch_size
        chunk = self.items[start : start + self.batch_size]
        return _prepare(start, chunk, self.transform, self.catch, self.lookup, None)


def _prepared_batches(
    images: Sequence[ImageInput],
    transform: Callable[[Image.Image], Any],
    batch_size: int,
    *,
    num_workers: int,
    skip_broken: bool,
    pin_memory: bool,
    lookup: _Lookup | None,
) -> Iterator[_Prepared]:
    """Batches of ``images`` made ready ahead of their use, in order: by ``num_workers`` DataLoader
    processes, else by a helper thread whose batches are decoded by a pool of
    :func:`decode_threads` threads (PIL and torch release the GIL while they decode, resize and
    convert, so the pool overlaps the caller's forward pass on other cores)."""
    if num_workers > 0:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _PreparedBatches(images, transform, batch_size, skip_broken, lookup),  # type: ignore[arg-type]
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_as_is,
            pin_memory=False,
            persistent_workers=False,
            prefetch_factor=LOADER_PREFETCH,
        )
        yield from loader
        return
    threads = decode_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="encoding-decode") if threads > 1 else None
    try:

        def batches() -> Iterator[_Prepared]:
            for start in range(0, len(images), batch_size):
                batch = _prepare(
                    start, images[start : start + batch_size], transform, skip_broken, lookup, pool
                )
                if pin_memory and batch.pixels is not None:
                    batch.pixels = batch.pixels.pin_memory()
                yield batch

        if len(images) <= batch_size:  # one batch: nothing to overlap it with
            yield from batches()
        else:
            yield from prefetch(batches())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def decoded_batches(
    images: Sequence[ImageInput],
    transform: Callable[[Image.Image], Any],
    batch_size: int,
    *,
    num_workers: int = 0,
    skip_broken: bool = True,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[Skipped]]]:
    """``(positions, pixels [b, 3, H, W] or None, skipped)`` per batch of ``images``, in order,
    prepared ahead (see :func:`_prepared_batches`)."""
    check_batch_size(batch_size)
    batches = _prepared_batches(
        images,
        transform,
        batch_size,
        num_workers=num_workers,
        skip_broken=skip_broken,
        pin_memory=pin_memory,
        lookup=None,
    )
    try:
        for batch in batches:
            yield batch.positions, batch.pixels, batch.skipped
    finally:
        if hasattr(batches, "close"):
            batches.close()


def _lookup(model: Any, transform: Any, feature_cache: FeatureCache | bool | None) -> _Lookup | None:
    """Cache access for ``model``'s image tower; for a tower whose last parts were trained on its
    locked prefix's cached rows (partial adaptation), also where those rows are, so images that
    training saw run only the trained suffix."""
    tower = towers.tower_of(model, "image")
    if feature_cache is None or feature_cache is False or tower is None:
        return None
    cache = FeatureCache() if feature_cache is True else feature_cache
    config = transform.config() if hasattr(transform, "config") else repr(transform)
    space = namespace(towers.fingerprint(model, "image"), config)
    split = tower_split(model)
    if split is None:
        return _Lookup(cache, space)
    return _Lookup(cache, space, namespace(prefix_fingerprint(tower, split), config), split)


def image_feature_batches(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
    runtime: str | None = None,
    feature_cache: FeatureCache | bool | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch whose ``vectors`` are the image tower's outputs ``[b, F]``
    (float32 CPU, before the head: not unit rows) for a model whose head runs apart from its tower
    (a :class:`~retrieval.model.TwinEncoder`). Features found in ``feature_cache`` (a
    :class:`FeatureCache`, or True for the default one) are read instead of computed, and computed
    ones are added to it; the tower runs on ``runtime`` (None: the model's ``runtime``, else torch)."""
    check_batch_size(batch_size)
    tower = towers.tower_of(model, "image")
    if tower is None:
        raise ValueError(
            f"{type(model).__name__} has no image tower whose head runs apart from it: use encode_images"
        )
    with inference(model, device) as target:
        runner = towers.tower_runner(model, "image", runtime, target)
        transform = model.image_transform()
        lookup = _lookup(model, transform, feature_cache)
        batches = _prepared_batches(
            images,
            transform,
            batch_size,
            num_workers=num_workers,
            skip_broken=skip_broken,
            pin_memory=target.type == "cuda" and runner is None,
            lookup=lookup,
        )
        try:
            for batch in batches:
                yield Encoded(_features(tower, runner, batch, target, lookup), batch.positions, batch.skipped)
        finally:
            if hasattr(batches, "close"):
                batches.close()


def _features(
    tower: torch.nn.Module, runner: Any, batch: _Prepared, target: torch.device, lookup: _Lookup | None
) -> torch.Tensor:
    """``[len(batch.positions), F]`` float32 CPU: cached rows and the tower's output for the others."""
    computed = None
    if batch.pixels is not None:
        if runner is not None:
            computed = runner(batch.pixels)  # [m, F]
        else:
            with torch.inference_mode():
                computed = tower(batch.pixels.to(target, non_blocking=True)).float().cpu()  # [m, F]
            computed = computed.clone()  # a plain tensor again, outside inference mode
        if lookup is not None:
            rows = [(key, computed[i].numpy()) for i, key in enumerate(batch.keys) if key is not None]
            lookup.cache.misses += len(rows)
            lookup.cache.put_many(rows)
    suffixed = None
    if batch.prefix_rows:  # the trained suffix on the locked prefix's cached rows (torch)
        assert lookup is not None and lookup.split is not None
        order = sorted(batch.prefix_rows)
        prefix = torch.from_numpy(
            np.stack([batch.prefix_rows[r] for r in order]).astype(np.float32)
        )  # [m, P]
        with torch.inference_mode():
            suffixed = tower.forward_suffix(prefix.to(target), lookup.split).float().cpu()  # [m, F]
        suffixed = suffixed.clone()
        lookup.cache.hits += len(order)
        lookup.cache.put_many([(batch.prefix_keys[r], suffixed[i].numpy()) for i, r in enumerate(order)])
    if lookup is not None:
        lookup.cache.hits += len(batch.cached)
    if computed is not None:
        dim = computed.shape[1]
    elif suffixed is not None:
        dim = suffixed.shape[1]
    else:
        dim = next(iter(batch.cached.values())).shape[0] if batch.cached else 0
    out = torch.empty((len(batch.positions), dim), dtype=torch.float32)  # [b, F]
    if computed is not None:
        out[batch.pixel_rows] = computed
    if suffixed is not None:
        out[sorted(batch.prefix_rows)] = suffixed
    for row, features in batch.cached.items():
        out[row] = torch.from_numpy(np.array(features, dtype=np.float32))
    return out


def image_batches(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
    runtime: str | None = None,
    feature_cache: FeatureCache | bool | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``images`` (PIL images, paths or ``tar://`` references),
    in order; see the module docstring for device, mode, prefetching and broken images.

    A model whose head runs apart from its tower (a :class:`~retrieval.model.TwinEncoder`) runs the
    tower on ``runtime`` (None: the model's ``runtime``, else torch) and reads / adds tower features
    in ``feature_cache`` (a :class:`FeatureCache`, True for the default one, None / False: off);
    its head always runs on torch. Other models run their ``image_features``."""
    check_batch_size(batch_size)
    if not (hasattr(model, "image_transform") and hasattr(model, "image_features")):
        yield from black_box(model, model.encode_images, images, batch_size, device, skip_broken)
        return
    if towers.tower_of(model, "image") is not None:
        features = image_feature_batches(
            model,
            images,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            skip_broken=skip_broken,
            runtime=runtime,
            feature_cache=feature_cache,
        )
        with inference(model, device):
            for encoded in features:
                if not encoded.positions:
                    yield Encoded(empty(model), [], encoded.skipped)
                    continue
                with torch.inference_mode():
                    vectors = model.project_image(encoded.vectors)  # [b, D]
                yield Encoded(unit(vectors.clone()), encoded.positions, encoded.skipped)
        return
    with inference(model, device) as target:
        batches = decoded_batches(
            images,
            model.image_transform(),
            batch_size,
            num_workers=num_workers,
            skip_broken=skip_broken,
            pin_memory=target.type == "cuda",
        )
        try:
            for positions, pixels, skipped in batches:
                if pixels is None:
                    vectors = empty(model)
                else:
                    with torch.inference_mode():
                        features = model.image_features(pixels.to(target, non_blocking=True))  # [b, D]
                    vectors = unit(features)  # a plain tensor again, outside inference mode
                yield Encoded(vectors, positions, skipped)
        finally:
            batches.close()


def _check_sequence(images: Any, what: str) -> None:
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(
            f"{what} expects a sequence of images or paths, received {type(images).__name__}: "
            "wrap a single image in [...]"
        )


def encode_images(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
    progress: bool = False,
    runtime: str | None = None,
    feature_cache: FeatureCache | bool | None = None,
) -> Encoded:
    """All of ``images`` encoded (:func:`image_batches` gathered): ``vectors [n_ok, D]``."""
    _check_sequence(images, "encode_images")
    batches = image_batches(
        model,
        images,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        skip_broken=skip_broken,
        runtime=runtime,
        feature_cache=feature_cache,
    )
    return gather(model, progress_bar(batches, progress, len(images), batch_size, "images"))


def encode_image_features(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
    progress: bool = False,
    runtime: str | None = None,
    feature_cache: FeatureCache | bool | None = None,
) -> Encoded:
    """All of ``images`` through the image tower alone (:func:`image_feature_batches` gathered):
    ``vectors [n_ok, F]`` are tower features, what ``model.project_image`` turns into unit vectors."""
    _check_sequence(images, "encode_image_features")
    batches = image_feature_batches(
        model,
        images,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        skip_broken=skip_broken,
        runtime=runtime,
        feature_cache=feature_cache,
    )
    parts = list(progress_bar(batches, progress, len(images), batch_size, "images"))
    kept = [p for p in parts if p.positions]
    if not kept:
        dim = int(getattr(model.image_tower, "output_dim", 0))
        return Encoded(torch.empty((0, dim)), [], [s for p in parts for s in p.skipped])
    return Encoded(
        torch.cat([p.vectors for p in kept]),
        [i for p in parts for i in p.positions],
        [s for p in parts for s in p.skipped],
    )
