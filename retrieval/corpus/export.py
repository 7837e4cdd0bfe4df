"""Subsets by query: the items of a collection matching text queries, copied with their media,
captions and metadata into a dataset that ``train``, ``embed`` and ``eval`` read back.

clip-retrieval's users cut subsets with its ``filter`` command and ask for the result as Parquet or
webdataset; here :func:`export_subset` encodes each query with the model that built the collection,
keeps the ``k`` best items per query, or every item whose cosine reaches ``threshold`` (range search:
:func:`retrieval.corpus.neighbours.range_search`), within an optional ``where`` filter, and writes
one record per image (:mod:`retrieval.corpus.writers`):

* an image item gives its image (the bytes its ``path`` names: a file, a shard member, table bytes)
  with every caption the collection holds for it (its own ``caption`` and the caption items that
  name the same image);
* a caption item gives its pair's image with the caption, or the caption alone when it has none.

Each record keeps the item's metadata (``path`` becomes ``source``; ``modality`` and ``caption`` are
said by the layout) plus ``export_score`` (its best cosine) and ``export_query`` (the query that
found it). Records come best first. Media that cannot be read any more are skipped and counted;
``export.json`` in the folder says what was asked and what was written.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.columns import ColumnTypes
from retrieval.corpus.config import ExportConfig
from retrieval.corpus.media import extension, read_media
from retrieval.corpus.neighbours import exact_scores, range_search, unit_rows
from retrieval.corpus.progress import progress_bar
from retrieval.corpus.selection import SCAN, chosen_modalities, held_modalities, ids_of, open_for, where_of
from retrieval.corpus.writers import FIXED, check_target, open_writer
from retrieval.io import atomic_write_json

__all__ = ["ExportResult", "export_subset"]

DROPPED_FIELDS = ("modality", "path", "caption")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_subset` wrote."""

    out: Path
    format: str
    queries: int
    matched: int  # items matching a query
    records: int  # records written (one per image, or per caption alone)
    images: int  # images copied
    skipped: dict[str, int]  # reason -> records left out
    saturated: int  # queries cut at max_k with a threshold (they may match more)
    seconds: float

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items()) or "none"
        line = (
            f"exported {self.records} records ({self.images} images) matching {self.queries} queries "
            f"({self.matched} items) as {self.format} to {self.out} in {self.seconds:.1f}s; skipped: {skipped}"
        )
        if self.saturated:
            line += f"; {self.saturated} queries reached --max-k matches (raise it to get them all)"
        return line


@dataclasses.dataclass
class _Record:
    image: str | None
    captions: list[str]
    metadata: dict[str, Any]
    score: float


def export_subset(
    collection: Any,
    queries: Sequence[str],
    model: Any,
    out: str | Path,
    config: ExportConfig | None = None,
    *,
    where: dict[str, Any] | None = None,
) -> ExportResult:
    """Copy the items of ``collection`` (a location or an open collection) matching ``queries``
    (texts, encoded by ``model``, which must be the collection's) into a dataset at ``out``.

    Raises ``ValueError`` for no query, an existing non-empty ``out`` (unless ``config.overwrite``)
    or a model that did not build the collection, and
    :class:`~retrieval.corpus.selection.EmptyCollectionError` when there is nothing to export.
    """
    config = config or ExportConfig()
    texts = [q.strip() for q in queries if isinstance(q, str)]
    if not texts or any(not q for q in texts) or len(texts) != len(queries):
        raise ValueError(
            f"give one or more non-empty text queries (--query / --query-file); received {list(queries)!r}"
        )
    check_target(out, config.overwrite)  # before any work
    started = time.perf_counter()
    coll, owned = open_for(collection)
    try:
        from retrieval.search import Searcher

        searcher = Searcher(model, coll)  # checks the model built the collection
        vectors = searcher.encode_texts(texts)  # [q, D]
        best, saturated = _matches(coll, vectors, config, where)
        records = _records(coll, best, texts, config)
        result = _write(records, Path(out), config)
        atomic_write_json(
            Path(out) / "export.json",
            {
                "collection": str(getattr(coll, "path", collection)),
                "queries": texts,
                "where": where,
                "config": config.to_dict(),
                "matched": len(best),
                "records": result[0],
                "images": result[1],
                "skipped": result[2],
                "saturated": saturated,
            },
            indent=2,
        )
    finally:
        if owned:
            coll.close()
    return ExportResult(
        Path(out), config.format, len(texts), len(best), result[0], result[1], result[2], saturated,
        time.perf_counter() - started,
    )  # fmt: skip


def _matches(
    coll: Any, vectors: np.ndarray, config: ExportConfig, where: dict[str, Any] | None
) -> tuple[dict[int, tuple[float, int]], int]:
    """item id -> (best cosine, index of the query that found it); and the saturated queries."""
    best: dict[int, tuple[float, int]] = {}
    saturated = 0
    queries = unit_rows(vectors)
    for modality in chosen_modalities(coll, config.modality):
        filters = {**(where or {}), **(where_of(coll, modality) or {})} or None
        if config.threshold is not None:
            found = range_search(coll, queries, config.threshold, where=filters, k=64, max_k=config.max_k)
            saturated += found.saturated
            per_query = [found.of(i) for i in range(len(queries))]
        else:
            _, ids = coll.search(queries, int(config.k or ExportConfig.DEFAULT_K), where=filters)  # [q, k]
            scores = exact_scores(coll, queries, ids)  # [q, k] cosines, whatever the index and metric
            per_query = [
                (row_ids[row_ids >= 0], row_scores[row_ids >= 0]) for row_ids, row_scores in zip(ids, scores)
            ]
        for q, (ids_q, scores_q) in enumerate(per_query):
            for item, score in zip(ids_q.tolist(), scores_q.tolist()):
                if item not in best or score > best[item][0]:
                    best[item] = (float(score), q)
    return best, saturated


def _records(
    coll: Any, best: dict[int, tuple[float, int]], texts: list[str], config: ExportConfig
) -> list[_Record]:
    """One record per image (every matched item naming it), or per caption alone; best first."""
    ids = np.array(sorted(best), dtype=np.int64)
    by_image: dict[str, _Record] = {}
    alone: list[_Record] = []
    for start in range(0, len(ids), SCAN):
        chunk = ids[start : start + SCAN]
        for item, meta in zip(chunk.tolist(), coll.get(chunk)):
            meta = dict(meta or {})
            score, q = best[item]
            extra = {k: v for k, v in meta.items() if k not in DROPPED_FIELDS}
            extra.update(export_score=round(score, 6), export_query=texts[q])
            if meta.get("path") is not None:
                extra["source"] = meta["path"]
            caption = meta.get("caption")
            captions = [str(caption)] if isinstance(caption, str) and caption.strip() else []
            image = meta.get("path")  # an image item's own, or the image of a caption item's pair
            if image is None:
                alone.append(_Record(None, captions, extra, score))
                continue
            record = by_image.get(image)
            if record is None:
                by_image[image] = _Record(str(image), captions, extra, score)
                continue
            record.captions += [c for c in captions if c not in record.captions]
            if meta.get("modality", "image") == "image" or score > record.score:
                extra.update(export_score=round(max(score, record.score), 6))
                record.metadata, record.score = extra, max(score, record.score)
    if by_image and "text" in (held_modalities(coll) or ()):
        _add_captions(coll, by_image)
    images = sorted(by_image.values(), key=lambda r: -r.score)
    return images + sorted(alone, key=lambda r: -r.score)  # images first: readers pick columns from row one


def _add_captions(coll: Any, by_image: dict[str, _Record]) -> None:
    """Every caption item naming an exported image adds its caption to it (one pass over the captions)."""
    text_ids = ids_of(coll, "text")
    for start in range(0, len(text_ids), SCAN):
        for meta in coll.get(text_ids[start : start + SCAN]):
            record = by_image.get((meta or {}).get("path"))
            caption = (meta or {}).get("caption")
            if (
                record is not None
                and isinstance(caption, str)
                and caption.strip()
                and caption not in record.captions
            ):
                record.captions.append(caption)


def _write(records: list[_Record], out: Path, config: ExportConfig) -> tuple[int, int, dict[str, int]]:
    """Write ``records``; returns (records written, images copied, skipped by reason)."""
    from retrieval.data import ImageDecodeError

    types = ColumnTypes(reserved=FIXED).observe(r.metadata for r in records)
    caption_list = any(len(r.captions) > 1 for r in records)
    writer = open_writer(
        config.format, out, types=types, caption_list=caption_list, shard_size=config.shard_size,
        overwrite=config.overwrite,
    )  # fmt: skip
    skipped: Counter[str] = Counter()
    try:
        with progress_bar(len(records), config.progress, "export", "record") as bar:
            for record in records:
                data = None
                if record.image is not None:
                    try:
                        data = read_media(record.image)
                    except ImageDecodeError:
                        skipped["media unreadable"] += 1
                        bar.update(1)
                        continue
                writer.add(
                    data, extension(record.image, data) if data else "", record.captions, record.metadata
                )
                bar.update(1)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.count, writer.images, dict(skipped)
