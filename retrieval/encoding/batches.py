"""What the encoders return (:class:`Encoded`, :class:`Skipped`), the default batch sizes, and the
path of black-box models (only ``encode_images`` / ``encode_texts``)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

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

    vectors: torch.Tensor  # [len(positions), D] float32, CPU: unit rows (tower features from *_feature_*)
    positions: list[int]  # index of each row's input in the sequence given, ascending
    skipped: list[Skipped]  # inputs left out (only with skip_broken)


def describe(item: Any, position: int) -> str:
    """How a skipped input is named: its reference, or ``<image N>`` for an in-memory image."""
    return f"<image {position}>" if isinstance(item, Image.Image) else str(item)


def black_box(
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
            yield Encoded(unit(vectors), list(range(start, start + len(chunk))), [])
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
                parts.append(unit(encode([item], batch_size=1, device=device)))  # [1, D]
                kept.append(i)
            except (ValueError, OSError) as exc:
                skipped.append(Skipped(i, describe(item, i), "encode_error", str(exc)))
        yield Encoded(torch.cat(parts) if parts else empty(model), kept, skipped)


def unit(vectors: Any) -> torch.Tensor:
    """``[B, D]`` float32 CPU rows of unit length (whatever array type the model returned)."""
    tensor = torch.as_tensor(vectors.detach() if hasattr(vectors, "detach") else vectors)
    return F.normalize(tensor.float().cpu(), dim=-1)  # [B, D]


def empty(model: Any) -> torch.Tensor:
    return torch.empty((0, int(model.embed_dim)), dtype=torch.float32)  # [0, D]


def gather(model: Any, batches: Iterable[Encoded]) -> Encoded:
    parts = list(batches)
    if not parts:
        return Encoded(empty(model), [], [])
    vectors = torch.cat([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors  # [n, D]
    return Encoded(vectors, [i for p in parts for i in p.positions], [s for p in parts for s in p.skipped])


def progress_bar(
    batches: Iterator[Encoded], enabled: bool, n: int, batch_size: int, unit: str
) -> Iterable[Encoded]:
    if not enabled or not sys.stderr.isatty():
        return batches
    from tqdm.auto import tqdm

    total = -(-n // batch_size)
    return tqdm(batches, total=total, desc=f"encoding {unit}", unit="batch")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received {batch_size!r}")
