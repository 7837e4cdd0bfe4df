"""The items of a corpus to embed, each with a stable identity key.

An *item* is one thing that becomes one vector: an image (``modality="image"``) or a
caption (``modality="text"``). Its key says what was embedded, so a re-run can tell done
work from new work:

* image: ``image:<reference>:<size>:<mtime_ns>`` -- a file that changes on disk gets a new
  key and is embedded again; for ``tar://`` references the shard's size and mtime count. The
  reference is normalised first (absolute, ``..`` and ``.`` resolved), so two spellings of one
  file are one item.
* text: ``text:<sha1 of image reference, image id and caption>:<n>`` where ``n`` numbers
  repeats of the same pair, so duplicates are kept rather than silently merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from retrieval.config import EmbedConfig
from retrieval.data.images import TAR_PREFIX, split_tar_ref

MODALITIES = EmbedConfig.CHOICES["modality"]


class PairLike(Protocol):
    """What an item is made from: :class:`retrieval.data.Pair` or anything shaped like it."""

    image: str
    caption: str
    image_id: str
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Item:
    """One image or caption to embed; ``metadata`` is what the collection stores for it."""

    key: str  # identity of the embedded content (see the module docstring)
    modality: str  # "image" | "text"
    ref: str  # image reference (path or tar:// reference) for images, the caption for texts
    metadata: dict[str, Any]  # modality, path, caption, image_id and the pair's extra fields


@dataclasses.dataclass(frozen=True)
class SourceSkip:
    """A record of the source that could not become an item (unreadable row, missing file)."""

    where: str  # file / row / member the problem is in
    reason: str  # short reason category, e.g. "missing_file", "unreadable_record"
    detail: str  # human-readable explanation


def read_source(source: Any, **read_options: Any) -> tuple[list[PairLike], list[SourceSkip]]:
    """Pairs of ``source``: a path the data layer reads (manifest, image folder, shards; with
    ``read_options`` for :func:`retrieval.data.read_pairs`), a ``PairSet``, or a sequence of
    pair-like records."""
    if isinstance(source, (str, os.PathLike)):
        from retrieval.data import read_pairs

        pair_set = read_pairs(source, **read_options)
        skips = [
            SourceSkip(str(where), "unreadable_record", str(reason)) for where, reason in pair_set.skipped
        ]
        return list(pair_set.pairs), skips
    pairs = getattr(source, "pairs", source)
    skipped = getattr(source, "skipped", ())
    skips = [SourceSkip(str(where), "unreadable_record", str(reason)) for where, reason in skipped]
    if not isinstance(pairs, Sequence) or isinstance(pairs, (str, bytes)):
        raise TypeError(
            f"source must be a path, a PairSet or a sequence of pairs; received {type(source).__name__}"
        )
    for pair in pairs[:1]:
        missing = [name for name in ("image", "caption", "image_id") if not hasattr(pair, name)]
        if missing:
            raise TypeError(
                f"source items must look like retrieval.data.Pair; {type(pair).__name__} lacks {missing}"
            )
    return list(pairs), skips


def normal_ref(ref: str) -> str:
    """One spelling per file: an absolute path with ``.`` and ``..`` resolved (for a ``tar://``
    reference, its shard path; member names are kept as the tar holds them)."""
    if ref.startswith(TAR_PREFIX):
        try:
            shard, member = split_tar_ref(ref)
        except ValueError:
            return ref
        return f"{TAR_PREFIX}{os.path.abspath(shard)}#{member}"
    return os.path.abspath(ref)


def _file_stamp(ref: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the file behind an image reference, ``None`` when it is missing."""
    try:
        path = split_tar_ref(ref)[0] if ref.startswith(TAR_PREFIX) else ref
    except ValueError:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _metadata(pair: PairLike, modality: str, ref: str) -> dict[str, Any]:
    extra = dict(getattr(pair, "metadata", None) or {})
    extra.update(
        modality=modality,
        path=ref,
        caption=str(pair.caption),
        image_id=str(pair.image_id),
    )
    return extra


def image_items(pairs: Iterable[PairLike]) -> tuple[list[Item], list[SourceSkip]]:
    """One item per distinct image reference (first-seen order); its metadata comes from its
    first pair. Images whose file is missing are returned as skips."""
    items: list[Item] = []
    skips: list[SourceSkip] = []
    seen: set[str] = set()
    for pair in pairs:
        ref = normal_ref(str(pair.image))
        if ref in seen:
            continue
        seen.add(ref)
        stamp = _file_stamp(ref)
        if stamp is None:
            skips.append(SourceSkip(ref, "missing_file", f"image file not found: {ref}"))
            continue
        key = f"image:{ref}:{stamp[0]}:{stamp[1]}"
        items.append(Item(key, "image", ref, _metadata(pair, "image", ref)))
    return items, skips


def text_items(pairs: Iterable[PairLike]) -> tuple[list[Item], list[SourceSkip]]:
    """One item per pair's caption, in source order; empty captions are returned as skips."""
    items: list[Item] = []
    skips: list[SourceSkip] = []
    repeats: dict[str, int] = {}
    for pair in pairs:
        caption = str(pair.caption)
        if not caption.strip():
            skips.append(SourceSkip(str(pair.image), "empty_caption", "caption is empty"))
            continue
        ref = normal_ref(str(pair.image))
        digest = hashlib.sha1(f"{ref}\0{pair.image_id}\0{caption}".encode()).hexdigest()
        n = repeats.get(digest, 0)
        repeats[digest] = n + 1
        items.append(Item(f"text:{digest}:{n}", "text", caption, _metadata(pair, "text", ref)))
    return items, skips


def caption_sample(pairs: Sequence[PairLike], limit: int) -> list[str]:
    """Up to ``limit`` distinct non-empty captions of ``pairs``, spread evenly over them (deterministic)."""
    captions = list(dict.fromkeys(c for c in (str(p.caption) for p in pairs) if c.strip()))
    if len(captions) <= limit:
        return captions
    step = len(captions) / limit
    return [captions[int(i * step)] for i in range(limit)]


def corpus_items(pairs: Sequence[PairLike], modality: str) -> tuple[list[Item], list[SourceSkip]]:
    """All items of ``pairs`` (from :func:`read_source`) for ``modality`` ("images" | "texts" |
    "both"), images first, with the images and captions that were skipped."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}; received {modality!r}")
    skips: list[SourceSkip] = []
    items: list[Item] = []
    if modality in ("images", "both"):
        found, missing = image_items(pairs)
        items += found
        skips += missing
    if modality in ("texts", "both"):
        found, empty = text_items(pairs)
        items += found
        skips += empty
    return items, skips
