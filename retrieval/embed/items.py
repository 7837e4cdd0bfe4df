"""The items of a corpus to embed, each with a stable identity key.

An *item* is one thing that becomes one vector: an image (``modality="image"``) or a
caption (``modality="text"``). A corpus's records give them: a pair both, an image alone its
image, a caption alone its caption (:mod:`retrieval.data.records`). Its key says what was
embedded, so a re-run can tell done work from new work:

* image: ``image:<reference>:<size>:<mtime_ns>`` -- a file that changes on disk gets a new
  key and is embedded again; for ``tar://`` references the shard's size and mtime count, for
  ``parquet://`` / ``arrow://`` references (image bytes in a table row) the table file's. The
  reference is normalised first (absolute, ``..`` and ``.`` resolved), so two spellings of one
  file are one item.
* text: ``text:<sha1 of image reference, image id and caption>:<n>`` where ``n`` numbers
  repeats of the same pair, so duplicates are kept rather than silently merged; a caption alone
  has an empty image reference (and an empty image id unless the source names one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from retrieval.config import EmbedConfig
from retrieval.data.images import TAR_PREFIX, split_tar_ref
from retrieval.data.records import reason_kind
from retrieval.data.refs import is_row_ref, row_ref_file, split_row_ref

MODALITIES = EmbedConfig.CHOICES["modality"]


class PairLike(Protocol):
    """What an item is made from: a :class:`retrieval.data.Record` (a pair, an image alone or a
    caption alone) or anything shaped like it."""

    image: str | None
    caption: str | None
    image_id: str | None
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Item:
    """One image or caption to embed; ``metadata`` is what the collection stores for it."""

    key: str  # identity of the embedded content (see the module docstring)
    modality: str  # "image" | "text"
    ref: str  # image reference (path, tar:// or row reference) for images, the caption for texts
    metadata: dict[str, Any]  # modality, path, caption, image_id (those it has) and the record's fields


@dataclasses.dataclass(frozen=True)
class SourceSkip:
    """Something of the source that could not become an item (unreadable row, missing file)."""

    where: str  # file / row / member the problem is in
    reason: str  # what went wrong, in words or as a code (e.g. "invalid JSON", "missing_file")
    detail: str  # human-readable explanation
    lost: str = "both"  # what it cost: "image", "text", "both", or "none" (a remark, e.g. bad metadata)

    def costs(self, modality: str) -> bool:
        """Whether it matters to a run embedding ``modality`` ("images" | "texts" | "both")."""
        wanted = {"images": ("image",), "texts": ("text",), "both": ("image", "text")}[modality]
        return self.lost in ("both", "none", *wanted)


def read_source(source: Any, **read_options: Any) -> tuple[list[PairLike], list[SourceSkip]]:
    """Records of ``source``: a path the data layer reads (with ``read_options`` for
    :func:`retrieval.data.read_corpus`), a ``Corpus``, a ``PairSet``, or a sequence of records."""
    if isinstance(source, (str, os.PathLike)):
        from retrieval.data import read_corpus

        source = read_corpus(source, **read_options)
    if hasattr(source, "records"):  # a Corpus
        skips = [SourceSkip(s.where, reason_kind(s.reason), s.reason, s.lost) for s in source.skipped]
        return list(source.records), skips
    records = getattr(source, "pairs", source)
    skipped = getattr(source, "skipped", ())
    skips = [SourceSkip(str(where), reason_kind(str(reason)), str(reason)) for where, reason in skipped]
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise TypeError(
            f"source must be a path, a Corpus, a PairSet or a sequence of records; received {type(source).__name__}"
        )
    for record in records[:1]:
        missing = [name for name in ("image", "caption", "image_id") if not hasattr(record, name)]
        if missing:
            raise TypeError(
                f"source items must look like retrieval.data.Record; {type(record).__name__} lacks {missing}"
            )
    return list(records), skips


def normal_ref(ref: str) -> str:
    """One spelling per file: an absolute path with ``.`` and ``..`` resolved (for a ``tar://``
    reference, its shard path; member names are kept as the tar holds them; a row reference is
    absolute already)."""
    if ref.startswith(TAR_PREFIX):
        try:
            shard, member = split_tar_ref(ref)
        except ValueError:
            return ref
        return f"{TAR_PREFIX}{os.path.abspath(shard)}#{member}"
    if is_row_ref(ref):
        return ref
    return os.path.abspath(ref)


def _file_stamp(ref: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the file behind an image reference, ``None`` when it is missing."""
    try:
        if ref.startswith(TAR_PREFIX):
            path = split_tar_ref(ref)[0]
        elif is_row_ref(ref):
            split_row_ref(ref)
            path = row_ref_file(ref)
        else:
            path = ref
    except ValueError:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _metadata(record: PairLike, modality: str, ref: str | None) -> dict[str, Any]:
    extra = dict(getattr(record, "metadata", None) or {})
    extra["modality"] = modality
    if ref is not None:
        extra["path"] = ref
    if record.caption is not None:
        extra["caption"] = str(record.caption)
    if record.image_id is not None:
        extra["image_id"] = str(record.image_id)
    return extra


def image_items(records: Iterable[PairLike]) -> tuple[list[Item], list[SourceSkip]]:
    """One item per distinct image reference (first-seen order); its metadata comes from its
    first record. Images whose file is missing are returned as skips; captions alone give none."""
    items: list[Item] = []
    skips: list[SourceSkip] = []
    seen: set[str] = set()
    for record in records:
        if record.image is None:
            continue
        ref = normal_ref(str(record.image))
        if ref in seen:
            continue
        seen.add(ref)
        stamp = _file_stamp(ref)
        if stamp is None:
            skips.append(SourceSkip(ref, "missing_file", f"image file not found: {ref}", "image"))
            continue
        key = f"image:{ref}:{stamp[0]}:{stamp[1]}"
        items.append(Item(key, "image", ref, _metadata(record, "image", ref)))
    return items, skips


def text_items(records: Iterable[PairLike]) -> tuple[list[Item], list[SourceSkip]]:
    """One item per caption, in source order; empty captions are returned as skips, images alone
    give none."""
    items: list[Item] = []
    skips: list[SourceSkip] = []
    repeats: dict[str, int] = {}
    for record in records:
        if record.caption is None:
            continue
        caption = str(record.caption)
        if not caption.strip():
            skips.append(SourceSkip(str(record.image), "empty_caption", "caption is empty", "text"))
            continue
        ref = normal_ref(str(record.image)) if record.image is not None else None
        image_id = "" if record.image_id is None else record.image_id
        digest = hashlib.sha1(f"{ref or ''}\0{image_id}\0{caption}".encode()).hexdigest()
        n = repeats.get(digest, 0)
        repeats[digest] = n + 1
        items.append(Item(f"text:{digest}:{n}", "text", caption, _metadata(record, "text", ref)))
    return items, skips


def caption_sample(records: Sequence[PairLike], limit: int) -> list[str]:
    """Up to ``limit`` distinct non-empty captions of ``records``, spread evenly over them (deterministic)."""
    texts = (str(r.caption) for r in records if r.caption is not None)
    captions = list(dict.fromkeys(c for c in texts if c.strip()))
    if len(captions) <= limit:
        return captions
    step = len(captions) / limit
    return [captions[int(i * step)] for i in range(limit)]


def corpus_items(pairs: Sequence[PairLike], modality: str) -> tuple[list[Item], list[SourceSkip]]:
    """All items of ``pairs`` (records, from :func:`read_source`) for ``modality`` ("images" |
    "texts" | "both"), images first, with the images and captions that were skipped."""
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
