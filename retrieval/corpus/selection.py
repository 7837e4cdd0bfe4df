"""Which items of a collection a corpus tool works on: the modalities it holds, the ids of one.

Collections made by ``retrieval embed`` tell images from captions by the ``modality`` metadata
field (``"image"`` / ``"text"``); a collection built from bare vectors (``retrieval index``) has no
such field and is taken as one kind of item. The tools take a modality the way ``embed`` names
them (``"images"``, ``"texts"``, ``"both"``) and work on each one apart: a caption and an image are
never compared with each other's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.data.records import EmptyCorpusError

__all__ = [
    "EmptyCollectionError",
    "chosen_modalities",
    "held_modalities",
    "ids_of",
    "open_for",
    "where_of",
]

SCAN = 8192  # metadata read at a time when listing the ids of one modality
SINGULAR = {"images": "image", "texts": "text"}
PLURAL = {"image": "images", "text": "texts"}


class EmptyCollectionError(EmptyCorpusError):
    """A collection, or the part of it a tool was asked to work on, holds no item (exit status 3)."""


def open_for(location: Any, *, write: bool = False) -> tuple[Any, bool]:
    """``(collection, opened_here)``: an open collection as given, or the one at ``location`` (a
    folder or a Milvus location) opened read-only unless ``write``."""
    if hasattr(location, "search") and hasattr(location, "vectors"):
        if write and getattr(location, "read_only", False):
            raise ValueError(
                f"collection {location.path} is open read-only: open it for writing to remove items"
            )
        return location, False
    from indexes import open_collection

    return open_collection(location, read_only=not write), True


def held_modalities(collection: Any) -> tuple[str, ...] | None:
    """The modalities present (``("image",)``, ``("image", "text")``...); ``None`` when the collection
    has no ``modality`` field (items of one unnamed kind); ``()`` when it is empty."""
    if not len(collection):
        return ()
    if "modality" not in collection.fields():
        return None
    probe = np.zeros((1, int(collection.dim)), dtype=np.float32)  # [1, D]
    probe[0, 0] = 1.0
    return tuple(
        m for m in ("image", "text") if collection.search(probe, 1, where={"modality": m})[1][0, 0] >= 0
    )


def _held_words(held: Sequence[str]) -> str:
    return " and ".join(PLURAL[m] for m in held) or "nothing"


def chosen_modalities(
    collection: Any, modality: str | None, *, all_by_default: bool = False
) -> list[str | None]:
    """The modalities (``"image"``, ``"text"``, or ``None`` for a collection without the field) a
    tool works on, one at a time. ``modality`` is ``"images"``, ``"texts"``, ``"both"`` or ``None``:
    images when the collection holds any, else captions (``all_by_default``: everything held).
    Raises :class:`EmptyCollectionError` for an empty collection or a modality it lacks."""
    where = getattr(collection, "path", collection)
    held = held_modalities(collection)
    if held == ():
        raise EmptyCollectionError(
            f"collection {where} is empty: nothing to work on (add items with `retrieval embed`)"
        )
    if held is None:
        return [None]
    if modality is None:
        return list(held) if all_by_default else ["image" if "image" in held else held[0]]
    if modality == "both":
        return list(held)
    wanted = SINGULAR[modality]
    if wanted not in held:
        raise EmptyCollectionError(
            f"collection {where} holds no {modality} (it holds {_held_words(held)}): "
            f"choose --modality {PLURAL[held[0]]}"
        )
    return [wanted]


def where_of(collection: Any, modality: str | None) -> dict[str, Any] | None:
    """The filter keeping one modality, or ``None`` when no filter is needed (the collection holds
    that modality only, or has no modality field)."""
    if modality is None:
        return None
    held = held_modalities(collection)
    return None if held is None or held == (modality,) else {"modality": modality}


def ids_of(collection: Any, modality: str | None) -> np.ndarray:
    """Ids of the items of ``modality`` (all items for ``None``), ascending; reads the metadata of
    every item only when the collection holds several modalities."""
    ids = np.asarray(collection.ids(), dtype=np.int64)
    if where_of(collection, modality) is None:
        return ids
    keep = np.zeros(len(ids), dtype=bool)
    for start in range(0, len(ids), SCAN):
        chunk = ids[start : start + SCAN]
        keep[start : start + len(chunk)] = [
            (meta or {}).get("modality") == modality for meta in collection.get(chunk)
        ]
    return ids[keep]
