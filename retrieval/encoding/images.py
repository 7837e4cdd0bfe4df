"""Images in, unit vectors out: decoding prefetched (a helper thread or DataLoader workers), broken
images skipped and reported or raised."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from retrieval.data.images import ImageDecodeError, load_image, to_rgb
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
from retrieval.encoding.runtime import inference, prefetch


def _decode(
    position: int, item: ImageInput, transform: Callable[[Image.Image], Any], catch: bool
) -> tuple[torch.Tensor | None, Skipped | None]:
    """``(pixels [3, H, W], None)``, or ``(None, Skipped)`` for a broken input when ``catch``."""
    try:
        image = to_rgb(item) if isinstance(item, Image.Image) else load_image(item)
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


class _DecodedImages:
    """torch Dataset (for DataLoader workers): position -> ``(position, pixels | None, Skipped | None)``."""

    def __init__(self, items: Sequence[ImageInput], transform: Callable[..., Any], catch: bool) -> None:
        self.items, self.transform, self.catch = items, transform, catch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, Skipped | None]:
        return (i, *_decode(i, self.items[i], self.transform, self.catch))


def _collate(
    rows: list[tuple[int, torch.Tensor | None, Skipped | None]],
) -> tuple[list[int], torch.Tensor | None, list[Skipped]]:
    good = [(i, t) for i, t, _ in rows if t is not None]
    pixels = torch.stack([t for _, t in good]) if good else None  # [B, 3, H, W]
    return [i for i, _ in good], pixels, [s for _, _, s in rows if s is not None]


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
    prepared ahead: by ``num_workers`` DataLoader processes, else (for more than one batch) by a
    helper thread. PIL and torch release the GIL, so the thread's decoding overlaps the caller's
    forward pass."""
    check_batch_size(batch_size)
    if num_workers > 0:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _DecodedImages(images, transform, skip_broken),  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=LOADER_PREFETCH,
        )
        yield from loader
        return

    def batches() -> Iterator[tuple[list[int], torch.Tensor | None, list[Skipped]]]:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            positions, pixels, skipped = _collate(
                [(i, *_decode(i, item, transform, skip_broken)) for i, item in enumerate(chunk, start)]
            )
            yield positions, (pixels.pin_memory() if pin_memory and pixels is not None else pixels), skipped

    if len(images) <= batch_size:  # one batch: nothing to overlap it with
        yield from batches()
    else:
        yield from prefetch(batches())


def image_batches(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``images`` (PIL images, paths or ``tar://`` references),
    in order; see the module docstring for device, mode, prefetching and broken images."""
    check_batch_size(batch_size)
    if not (hasattr(model, "image_transform") and hasattr(model, "image_features")):
        yield from black_box(model, model.encode_images, images, batch_size, device, skip_broken)
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


def encode_images(
    model: Any,
    images: Sequence[ImageInput],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_broken: bool = False,
    progress: bool = False,
) -> Encoded:
    """All of ``images`` encoded (:func:`image_batches` gathered): ``vectors [n_ok, D]``."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(
            f"encode_images expects a sequence of images or paths, received {type(images).__name__}: "
            "wrap a single image in [...]"
        )
    batches = image_batches(
        model, images, batch_size=batch_size, device=device, num_workers=num_workers, skip_broken=skip_broken
    )
    return gather(model, progress_bar(batches, progress, len(images), batch_size, "images"))
