"""The table ``retrieval search`` prints: one row per hit with its caption and path, readable.

Captions lose their line breaks and runs of spaces; paths under the current folder are shown
relative to it. On a terminal a row fits its width: the caption and the path are shortened within
their own columns (a caption keeps its start, a path its end: the file name).
Piped elsewhere, nothing is cut (``--json`` is the format for programs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["hits_table"]

_SPACE = re.compile(r"\s+")
_MIN_CAPTION = 24


def _clean(text: Any) -> str:
    return _SPACE.sub(" ", str(text)).strip() if text is not None else ""


def _shown_path(path: Any) -> str:
    if not path:
        return ""
    text = str(path)
    if os.path.isabs(text):
        try:
            relative = os.path.relpath(text)
        except ValueError:  # another drive (Windows)
            return text
        if not relative.startswith(".."):
            return relative
    return text


def _cut_end(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _cut_start(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - max(width - 1, 0) :]


def hits_table(hits: Sequence[Any], width: int | None = None, *, cosine: bool = False) -> str:
    """Rank, score, id, modality, caption and path of each hit; ``width``: characters per row at
    most (``None``: no limit). ``cosine``: a column with each hit's cosine beside its score (for
    corrected scores: hubness correction, re-ranking)."""
    if not hits:
        return "(no results)"
    rows = []
    for rank, hit in enumerate(hits, 1):
        meta = hit.metadata or {}
        caption = meta.get("caption")
        if caption is None and isinstance(meta.get("captions"), list) and meta["captions"]:
            caption = meta["captions"][0]
        rows.append(
            (
                rank,
                hit.score,
                hit.score if getattr(hit, "cosine", None) is None else hit.cosine,
                hit.id,
                _clean(meta.get("modality")),
                _clean(caption),
                _shown_path(meta.get("path")),
            )
        )
    id_width = max(2, *(len(str(r[3])) for r in rows))
    caption_width = max(len("caption"), *(len(r[5]) for r in rows))
    path_width = max(len("path"), *(len(r[6]) for r in rows))
    cosine_width = 9 if cosine else 0
    fixed = 4 + 2 + 7 + cosine_width + 2 + id_width + 2 + 8 + 2 + 2  # rank, scores, id, modality, gaps
    if width is not None and fixed + caption_width + path_width > width:
        room = max(width - fixed, 2 * _MIN_CAPTION)
        caption_width = min(caption_width, max(_MIN_CAPTION, room - path_width))
        path_width = max(len("path"), room - caption_width)
    cosine_head = f"  {'cosine':>7}" if cosine else ""
    lines = [
        f"{'rank':>4}  {'score':>7}{cosine_head}  {'id':>{id_width}}  {'modality':<8}  "
        f"{'caption':<{caption_width}}  path"
    ]
    for rank, score, cos, item_id, modality, caption, path in rows:
        shown = _cut_end(caption, caption_width)
        cos_text = f"  {cos:>7.4f}" if cosine else ""
        line = (
            f"{rank:>4}  {score:>7.4f}{cos_text}  {item_id:>{id_width}}  {modality:<8}  "
            f"{shown:<{caption_width}}  {_cut_start(path, path_width)}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines)
