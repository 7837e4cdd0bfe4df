"""The one inference path: images and captions in, float32 unit vectors out.

Everything that encodes for inference goes through here: ``TwinEncoder.encode_images`` /
``encode_texts``, the :class:`~retrieval.search.Searcher` (and through it the service), the
embed engines (local and Ray), :func:`~retrieval.evaluate.evaluate_model` and the validation of
a training run. What it does, once for all of them:

* **batches**: ``batch_size`` items per forward pass (defaults :data:`IMAGE_BATCH_SIZE`,
  :data:`TEXT_BATCH_SIZE`); streaming callers take one :class:`Encoded` per batch
  (:func:`image_batches`, :func:`text_batches`), the others the whole result
  (:func:`encode_images`, :func:`encode_texts`).
* **prefetches**: while a batch runs its forward pass, the next image batches are read,
  decoded and transformed in a helper thread (or in ``DataLoader`` worker processes with
  ``num_workers > 0``) and the next caption batches are tokenized in a helper thread.
* **device**: ``device=None`` encodes where the model is; another device moves the model there
  for the call and back afterwards. :func:`pick_device` is the toolkit's one choice of a default
  device: CUDA when present, else the CPU.
* **mode**: a model in train mode is put in eval mode for the call and back in train mode
  afterwards; a model in eval mode is never touched, so concurrent calls on it are safe.
* **broken items**: with ``skip_broken=True`` an image that cannot be decoded or transformed is
  left out and reported (:class:`Skipped`: its position, reason, detail); otherwise its error
  (:class:`~retrieval.data.ImageDecodeError` for an unreadable file) propagates.

A model offers ``image_transform()`` + ``image_features(pixels [B, 3, H, W])`` and
``tokenize(texts)`` + ``text_features(tokens)``, and ``embed_dim`` (a
:class:`~retrieval.model.TwinEncoder` does). A model that only offers
``encode_images(items, batch_size=, device=)`` / ``encode_texts(...)`` (a black box, e.g. the
service's shared model runner) is called batch by batch instead; with ``skip_broken`` a batch
that fails with ``ValueError`` / ``OSError`` is retried one item at a time to find the culprits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.data.images import ImageDecodeError, load_image, to_rgb

__all__ = [
    "IMAGE_BATCH_SIZE",
    "TEXT_BATCH_SIZE",
    "Encoded",
    "Skipped",
    "decoded_batches",
    "encode_images",
    "encode_texts",
    "image_batches",
    "inference",
    "pick_device",
    "prefetch",
    "text_batches",
]

IMAGE_BATCH_SIZE = 64  # images per forward pass unless the caller says otherwise
TEXT_BATCH_SIZE = 256  # captions per forward pass unless the caller says otherwise
PREFETCH_DEPTH = 2  # batches prepared ahead of the one running its forward pass
LOADER_PREFETCH = 4  # batches each DataLoader worker process prepares ahead

logger = logging.getLogger(__name__)

ImageInput = Any  # PIL.Image.Image | str | os.PathLike: an image, a path or a tar:// reference


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An input that got no vector."""

    position: int  # index in the sequence given to the encoder
    item: str  # the reference (path, tar:// reference) or "<image N>" for an in-memory image
    reason: str  # "decode_error" | "transform_error" | "encode_error" (a black box refused it)
    detail: str  # the error message


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Vectors of the inputs that could be encoded, and what could not be."""

    vectors: torch.Tensor  # [len(positions), D] float32, CPU, unit rows
    positions: list[int]  # index of each row's input in the sequence given, ascending
    skipped: list[Skipped]  # inputs left out (only with skip_broken)


# ----------------------------------------------------------------------------- device and mode
def pick_device(preference: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``preference`` as a device; ``None`` / ``""`` / ``"auto"``: CUDA when present (GPU
    ``local_rank`` modulo the GPU count), else the CPU. Asking for CUDA without it is an error."""
    if preference is None or preference in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(preference)!r} requested but CUDA is not available: use 'cpu' or leave it unset"
        )
    return device


def _home(model: Any) -> torch.device | None:
    """Where a model's weights are (``None`` for a model without torch parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        first = next(model.parameters(), None)
        return first.device if first is not None else None
    return None


@contextlib.contextmanager
def inference(model: Any, device: str | torch.device | None = None) -> Iterator[torch.device]:
    """Hold ``model`` in eval mode on ``device`` (default: where it is) and yield that device; its
    mode and device are restored on exit. A model already in eval mode where it is is not touched."""
    home = _home(model)
    target = torch.device(device) if device is not None else (home or torch.device("cpu"))
    module = isinstance(model, torch.nn.Module)
    was_training = module and model.training
    moved = module and home is not None and target != home
    if moved:
        model.to(target)
    if was_training:
        model.eval()
    try:
        yield target
    finally:
        if was_training:
            model.train(True)
        if moved:
            model.to(home)


# ---------------------------------------------------------------------------------- prefetch
def prefetch(iterable: Iterable[Any], depth: int = PREFETCH_DEPTH) -> Iterator[Any]:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; its errors are re-raised here
    and the thread stops when this iterator is closed or abandoned."""
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="encoding-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------ images
def _describe(item: ImageInput, position: int) -> str:
    return f"<image {position}>" if isinstance(item, Image.Image) else str(item)


def _decode(
    position: int, item: ImageInput, transform: Callable[[Image.Image], Any], catch: bool
) -> tuple[torch.Tensor | None, Skipped | None]:
    """``(pixels [3, H, W], None)``, or ``(None, Skipped)`` for a broken input when ``catch``."""
    try:
        image = to_rgb(item) if isinstance(item, Image.Image) else load_image(item)
    except ImageDecodeError as exc:
        if not catch:
            raise
        return None, Skipped(position, _describe(item, position), "decode_error", str(exc))
    try:
        return transform(image), None
    except Exception as exc:  # a transform failing on a decoded image is a per-item problem
        if not catch:
            raise
        detail = f"{type(exc).__name__}: {exc}"
        return None, Skipped(position, _describe(item, position), "transform_error", detail)


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
    _check_batch_size(batch_size)
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
    _check_batch_size(batch_size)
    if not (hasattr(model, "image_transform") and hasattr(model, "image_features")):
        yield from _black_box(model, model.encode_images, images, batch_size, device, skip_broken)
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
                    vectors = _empty(model)
                else:
                    with torch.inference_mode():
                        features = model.image_features(pixels.to(target, non_blocking=True))  # [b, D]
                    vectors = _unit(features)  # a plain tensor again, outside inference mode
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
    return _gather(model, _progress(batches, progress, len(images), batch_size, "images"))


# ------------------------------------------------------------------------------------- texts
def text_batches(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> Iterator[Encoded]:
    """One :class:`Encoded` per batch of ``texts``, in order; the next batches are tokenized in a
    helper thread while the current one runs its forward pass."""
    if isinstance(texts, str):
        raise ValueError(
            f"encode_texts expects a list of strings, received one string {texts[:40]!r}: wrap it in [...]"
        )
    _check_batch_size(batch_size)
    if not (hasattr(model, "tokenize") and hasattr(model, "text_features")):
        yield from _black_box(model, model.encode_texts, texts, batch_size, device, False)
        return
    starts = range(0, len(texts), batch_size)
    tokenized: Iterator[tuple[int, int, Any]] = (
        (start, len(chunk), model.tokenize(chunk))
        for start in starts
        for chunk in [list(texts[start : start + batch_size])]
    )
    if len(starts) > 1:
        tokenized = prefetch(tokenized)
    with inference(model, device) as target:
        try:
            for start, n, tokens in tokenized:
                on_device = {k: v.to(target) if hasattr(v, "to") else v for k, v in tokens.items()}
                with torch.inference_mode():
                    features = model.text_features(on_device)  # [b, D]
                yield Encoded(_unit(features), list(range(start, start + n)), [])
        finally:
            if hasattr(tokenized, "close"):
                tokenized.close()


def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Encoded:
    """All of ``texts`` encoded (:func:`text_batches` gathered): ``vectors [n, D]``."""
    batches = text_batches(model, texts, batch_size=batch_size, device=device)
    return _gather(model, _progress(batches, progress, len(texts), batch_size, "texts"))


# ----------------------------------------------------------------------------------- helpers
def _black_box(
    model: Any,
    encode: Callable[..., Any],
    items: Sequence[Any],
    batch_size: int,
    device: str | torch.device | None,
    skip_broken: bool,
) -> Iterator[Encoded]:
    """Batches through a model's own ``encode_images`` / ``encode_texts``; with ``skip_broken``, a
    failing batch is retried item by item and the items that still fail are skipped."""
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        try:
            vectors = encode(chunk, batch_size=len(chunk), device=device)  # [b, D]
            yield Encoded(_unit(vectors), list(range(start, start + len(chunk))), [])
            continue
        except (ValueError, OSError) as exc:
            if not skip_broken:
                raise
            logger.warning(
                "an item could not be encoded (%s); retrying one by one to skip the broken ones", exc
            )
        kept: list[int] = []
        parts: list[torch.Tensor] = []
        skipped: list[Skipped] = []
        for i, item in enumerate(chunk, start):
            try:
                parts.append(_unit(encode([item], batch_size=1, device=device)))  # [1, D]
                kept.append(i)
            except (ValueError, OSError) as exc:
                skipped.append(Skipped(i, _describe(item, i), "encode_error", str(exc)))
        yield Encoded(torch.cat(parts) if parts else _empty(model), kept, skipped)


def _unit(vectors: Any) -> torch.Tensor:
    """``[B, D]`` float32 CPU rows of unit length (whatever array type the model returned)."""
    tensor = torch.as_tensor(vectors.detach() if hasattr(vectors, "detach") else vectors)
    return F.normalize(tensor.float().cpu(), dim=-1)  # [B, D]


def _empty(model: Any) -> torch.Tensor:
    return torch.empty((0, int(model.embed_dim)), dtype=torch.float32)  # [0, D]


def _gather(model: Any, batches: Iterable[Encoded]) -> Encoded:
    parts = list(batches)
    if not parts:
        return Encoded(_empty(model), [], [])
    vectors = torch.cat([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors  # [n, D]
    return Encoded(vectors, [i for p in parts for i in p.positions], [s for p in parts for s in p.skipped])


def _progress(
    batches: Iterator[Encoded], enabled: bool, n: int, batch_size: int, unit: str
) -> Iterable[Encoded]:
    if not enabled or not sys.stderr.isatty():
        return batches
    from tqdm.auto import tqdm

    total = -(-n // batch_size)
    return tqdm(batches, total=total, desc=f"encoding {unit}", unit="batch")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received {batch_size!r}")
