"""Tags and keyword lists as extra positives of their image (``TrainConfig.tags_column``).

Catalogues rarely come with one good caption per image; they come with a title and a list of tags
or keywords ("cat, animal, pet"). A manifest column holding them (a list of strings, a JSON list in
a string, or one string separated by commas, semicolons or ``|``) is read from each pair's metadata,
and every distinct tag of an image becomes one more training pair of that image (validation keeps
the captions alone: it measures what users type). In a batch, rows of one image and rows of one text
match (a tag such as "animal" names several images): the losses never treat them as negatives, and
``multi_positive=True`` makes them positives of each other
(:class:`retrieval.losses.ClipLoss`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from retrieval.data import Pair, PairSet

__all__ = ["parse_tags", "with_tags"]

_SEPARATORS = re.compile(r"[,;|]")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def parse_tags(value: Any) -> list[str]:
    """The tags in one metadata value: a list (or tuple) of strings, a JSON list in a string, or one
    string split at commas, semicolons and ``|``; blanks and repeats dropped, order kept."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return parse_tags(parsed)
        items: Sequence[Any] = _SEPARATORS.split(text)
    elif isinstance(value, (list, tuple)):
        items = [x for v in value for x in (parse_tags(v) if isinstance(v, (list, tuple)) else [v])]
    else:
        items = [value]
    seen: dict[str, str] = {}
    for item in items:
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            continue
        tag = " ".join(str(item).split())
        if tag:
            seen.setdefault(_norm(tag), tag)
    return list(seen.values())


def with_tags(pairs: PairSet, columns: str) -> tuple[PairSet, int]:
    """``(pairs plus one pair per distinct tag of each image, number of tag pairs added)``.

    ``columns`` names one metadata field or several separated by commas; a tag equal to a caption
    of its image (ignoring case and spaces) adds nothing. Raises ``ValueError`` when no pair has any
    of the fields, naming the fields the pairs do have."""
    names = [c.strip() for c in columns.split(",") if c.strip()]
    if not names:
        raise ValueError(
            f"tags_column {columns!r} names no field: give a manifest column, e.g. tags_column=tags"
        )
    present = [p for p in pairs.pairs if any(name in p.metadata for name in names)]
    if pairs.pairs and not present:
        fields = sorted({k for p in pairs.pairs[:100] for k in p.metadata})
        raise ValueError(
            f"no training pair has the tags field(s) {names}; their metadata fields are {fields}: set "
            "tags_column to one of them (or leave it unset)"
        )
    known: dict[str, set[str]] = {}
    first: dict[str, Pair] = {}
    tags: dict[str, dict[str, str]] = {}
    for pair in pairs.pairs:
        known.setdefault(pair.image_id, set()).add(_norm(pair.caption))
        first.setdefault(pair.image_id, pair)
        for name in names:
            for tag in parse_tags(pair.metadata.get(name)):
                tags.setdefault(pair.image_id, {}).setdefault(_norm(tag), tag)
    added = []
    for image_id, found in tags.items():
        pair = first[image_id]
        for key, tag in found.items():
            if key in known[image_id]:
                continue
            metadata = {**pair.metadata, "tag": True}
            added.append(Pair(image=pair.image, caption=tag, image_id=image_id, metadata=metadata))
    return PairSet([*pairs.pairs, *added], list(pairs.skipped)), len(added)
