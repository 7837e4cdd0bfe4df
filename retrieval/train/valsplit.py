"""The automatic validation split: a deterministic share of the training images held out when no
validation data is given, so that the trainer can measure when more epochs stop helping.

Images (not pairs) are held out, so all captions of an image land on the same side. Which images is
decided by a hash of each image's key (its ``image_id`` when the manifest names one, else its path
relative to the data's common folder), not by the training seed: runs with different seeds, and a
resumed run, validate on the same images, and moving the data folder changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any

__all__ = ["VAL_MAX_IMAGES", "VAL_MIN_IMAGES", "ValSplit", "held_out_count", "held_out_images", "split_pairs"]

VAL_MIN_IMAGES = 50  # fewer validation images than this measure recall too noisily to stop on
VAL_MAX_IMAGES = 1000  # more cost validation time and training data without steadier decisions
MAX_HELD_OUT_SHARE = 0.2  # never hold out more than this share of the images
VAL_FLOOR_IMAGES = 10  # sets where that share is fewer images than this get no split
_SALT = "retrieval-val-split"


@dataclasses.dataclass(frozen=True)
class ValSplit:
    """What the automatic split held out (recorded in the run as ``validation.json``)."""

    fraction: float  # requested share of the training images
    images: int  # images held out
    pairs: int  # pairs (captions) held out
    train_images: int  # images left for training
    reason: str  # why this size (or why no split)

    def to_dict(self) -> dict[str, Any]:
        return {"source": "auto", **dataclasses.asdict(self)}


def _keys(pairs: Any) -> dict[str, str]:
    """image_id -> the stable key hashed for the split."""
    ids = pairs.image_ids()
    paths = dict(zip(ids, pairs.images()))
    local = [p for i, p in paths.items() if i == p and "://" not in p]
    root = os.path.commonpath(local) if len(local) > 1 else (os.path.dirname(local[0]) if local else "")
    keys = {}
    for image_id in ids:
        if image_id == paths[image_id] and root and "://" not in image_id:
            keys[image_id] = os.path.relpath(image_id, root).replace(os.sep, "/")
        else:
            keys[image_id] = image_id
    return keys


def held_out_count(n_images: int, fraction: float) -> tuple[int, str]:
    """How many of ``n_images`` to hold out for ``fraction``, and why: ``fraction`` of them, raised to
    :data:`VAL_MIN_IMAGES` and lowered to :data:`VAL_MAX_IMAGES`, but never more than
    :data:`MAX_HELD_OUT_SHARE` of the set; none when that leaves fewer than :data:`VAL_FLOOR_IMAGES`."""
    if fraction <= 0:
        return 0, "automatic validation split turned off"
    wanted = round(fraction * n_images)
    n = min(VAL_MAX_IMAGES, max(VAL_MIN_IMAGES, wanted))
    share = math.floor(MAX_HELD_OUT_SHARE * n_images)
    if n > share:
        if share < VAL_FLOOR_IMAGES:
            return 0, (
                f"{n_images} images are too few to hold out {VAL_FLOOR_IMAGES} for validation "
                f"(at most {MAX_HELD_OUT_SHARE:.0%} of them)"
            )
        return (
            share,
            f"{MAX_HELD_OUT_SHARE:.0%} of {n_images} images (a small set: fewer than {VAL_MIN_IMAGES})",
        )
    if n == wanted:
        return n, f"{fraction:.0%} of {n_images} images"
    bound = "raised to the minimum" if n > wanted else "lowered to the maximum"
    return n, f"{fraction:.0%} of {n_images} images is {wanted}, {bound} of {n}"


def held_out_images(pairs: Any, fraction: float) -> tuple[set[str], str]:
    """The image ids to hold out of ``pairs`` (a PairSet) and why that many: the ``n`` images whose
    keys hash lowest (sha256), with ``n`` from :func:`held_out_count`."""
    keys = _keys(pairs)
    n, reason = held_out_count(len(keys), fraction)
    ranked = sorted(keys, key=lambda i: hashlib.sha256(f"{_SALT}:{keys[i]}".encode()).hexdigest())
    return set(ranked[:n]), reason


def split_pairs(pairs: Any, fraction: float) -> tuple[Any, Any | None, ValSplit]:
    """``(train, val or None, record)``: ``pairs`` with a deterministic share of its images held out.
    ``pairs`` is not modified; ``val`` is None when the set is too small or ``fraction`` is 0."""
    from retrieval.data import PairSet

    if not 0 <= fraction < 1 or math.isnan(fraction):
        raise ValueError(
            f"val_fraction must be in [0, 1), received {fraction!r}: try 0.1, or 0 to turn it off"
        )
    held, reason = held_out_images(pairs, fraction)
    train = [p for p in pairs.pairs if p.image_id not in held]
    val = [p for p in pairs.pairs if p.image_id in held]
    record = ValSplit(
        fraction=fraction,
        images=len(held),
        pairs=len(val),
        train_images=len({p.image_id for p in train}),
        reason=reason,
    )
    if not held:
        return pairs, None, record
    return PairSet(train, list(pairs.skipped)), PairSet(val, []), record
