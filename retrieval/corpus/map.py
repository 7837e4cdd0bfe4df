"""A map of the space: a 2-D projection of a sample of a collection, as a self-contained HTML page
(thumbnails on hover, colour by a metadata field, nothing fetched when it opens) and a PNG for reports.

:func:`draw_map` draws a seeded uniform sample of up to ``sample`` items (images and captions apart
or together), projects their stored vectors (:mod:`retrieval.corpus.projection`: UMAP when
``umap-learn`` is installed, else PCA) and colours them by ``color_by``: a field with few values (or
text) is categorical, the ``max_categories`` most frequent values get a colour and the rest are grey;
a numeric field with more values is a colour ramp. Thumbnails (``thumbnail_px`` JPEGs as ``data:``
URIs) are embedded for the sampled images until ``thumbnail_bytes`` is spent; the other points show
their caption only. The page itself is :mod:`retrieval.corpus.map_page`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.config import MapConfig
from retrieval.corpus.media import data_uri_thumbnail
from retrieval.corpus.neighbours import unit_rows
from retrieval.corpus.progress import progress_bar
from retrieval.corpus.projection import project
from retrieval.corpus.selection import SCAN, chosen_modalities, ids_of, open_for
from retrieval.io import atomic_write_bytes, atomic_write_text

__all__ = ["MapResult", "draw_map"]

# 20 distinct colours for categories (the "other" values are grey)
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#637939",
)  # fmt: skip
OTHER = "(other)"
MISSING = "(none)"


@dataclasses.dataclass(frozen=True)
class MapResult:
    """What :func:`draw_map` drew."""

    html: Path
    png: Path | None
    points: int  # items drawn
    population: int  # items they were drawn from
    method: str  # "umap" | "pca"
    color_by: str | None
    thumbnails: int  # thumbnails embedded in the page
    seconds: float

    def __str__(self) -> str:
        colour = f", coloured by {self.color_by}" if self.color_by else ""
        line = (
            f"map of {self.points:,} of {self.population:,} items ({self.method}{colour}, {self.thumbnails} "
            f"thumbnails) -> {self.html}"
        )
        return line + (f" and {self.png}" if self.png else "") + f" in {self.seconds:.1f}s"


def draw_map(
    collection: Any, out: str | Path, config: MapConfig | None = None, *, png: str | Path | bool | None = True
) -> MapResult:
    """Draw the map of ``collection`` (a location or an open collection) into ``out`` (HTML) and
    ``png`` (``True``: ``out`` with ``.png``; ``None`` / ``False``: none). Raises
    :class:`~retrieval.corpus.selection.EmptyCollectionError` for an empty collection and
    ``ValueError`` for a ``color_by`` field the collection lacks."""
    config = config or MapConfig()
    started = time.perf_counter()
    out = Path(out)
    coll, owned = open_for(collection)
    try:
        modalities = chosen_modalities(coll, config.modality, all_by_default=True)
        field = config.color_by
        if field is not None and field not in coll.fields():
            raise ValueError(
                f"--color-by {field}: collection {getattr(coll, 'path', collection)} has no metadata field "
                f"{field!r}; its fields: {', '.join(coll.fields()) or '(none)'}"
            )
        if field is None and "modality" in coll.fields() and len(modalities) > 1:
            field = "modality"
        ids = np.unique(np.concatenate([ids_of(coll, m) for m in modalities]))
        rng = np.random.default_rng(config.seed)
        chosen = np.sort(rng.choice(ids, size=min(config.sample, len(ids)), replace=False))
        vectors = np.concatenate([coll.vectors(chosen[s : s + SCAN]) for s in range(0, len(chosen), SCAN)])
        metadata = [m or {} for s in range(0, len(chosen), SCAN) for m in coll.get(chosen[s : s + SCAN])]
        where = str(getattr(coll, "path", collection))
    finally:
        if owned:
            coll.close()
    xy, method = project(unit_rows(vectors), config.method, config.seed)  # [n, 2]
    colours = _colours(metadata, field, config.max_categories)
    thumbs, thumb_of = _thumbnails(metadata, rng, config)
    data = {
        "x": [round(float(v), 5) for v in xy[:, 0]],
        "y": [round(float(v), 5) for v in xy[:, 1]],
        **colours,
        "field": field or "",
        "palette": list(PALETTE),
        "labels": [_label(m) for m in metadata],
        "meta": [_meta(i, m, field) for i, m in zip(chosen.tolist(), metadata)],
        "t": thumb_of,
        "thumbs": thumbs,
    }
    subtitle = f"{len(chosen):,} of {len(ids):,} items, {method.upper()}" + (
        f", colour: {field}" if field else ""
    )
    from retrieval.corpus.map_page import render_page

    atomic_write_text(out, render_page(f"Map of {Path(where).name or where}", subtitle, data))
    png_path = None
    if png is not None and png is not False:
        png_path = out.with_suffix(".png") if png is True else Path(png)
        atomic_write_bytes(png_path, _png(xy, colours, field, config.png_px, subtitle))
    return MapResult(
        out, png_path, len(chosen), len(ids), method, field, len(thumbs), time.perf_counter() - started
    )


def _value(meta: dict[str, Any], field: str | None) -> Any:
    return meta.get(field) if field else None


def _colours(metadata: list[dict[str, Any]], field: str | None, max_categories: int) -> dict[str, Any]:
    """``c`` (a category index, -1 for the grey "other", or a 0-1 value), ``kind``, the legend."""
    if field is None:
        return {
            "c": [0] * len(metadata),
            "kind": "none",
            "categories": [],
            "counts": [],
            "other": OTHER,
            "range": [],
        }
    values = [_value(m, field) for m in metadata]
    numbers = [
        v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    present = [v for v in values if v is not None]
    if present and len(numbers) == len(present) and len(set(numbers)) > max_categories:
        low, high = min(numbers), max(numbers)
        span = (high - low) or 1.0
        scaled = [None if not isinstance(v, (int, float)) else round((v - low) / span, 4) for v in values]
        return {
            "c": scaled,
            "kind": "numeric",
            "categories": [],
            "counts": [],
            "other": OTHER,
            "range": [low, high],
        }
    names = [MISSING if v is None else str(v) for v in values]
    counts = collections.Counter(names)
    top = [name for name, _ in counts.most_common(max_categories)]
    index = {name: k for k, name in enumerate(top)}
    codes = [index.get(name, -1) for name in names]
    legend, legend_counts = list(top), [counts[name] for name in top]
    rest = sum(1 for c in codes if c < 0)
    if rest:
        legend.append(OTHER)
        legend_counts.append(rest)
    return {
        "c": codes,
        "kind": "categorical",
        "categories": legend,
        "counts": legend_counts,
        "other": OTHER,
        "range": [],
    }


def _label(meta: dict[str, Any]) -> str:
    caption = meta.get("caption")
    if isinstance(caption, str) and caption:
        return caption[:300]
    path = meta.get("path")
    return str(path).rsplit("/", 1)[-1] if path else ""


def _meta(item: int, meta: dict[str, Any], field: str | None) -> str:
    parts = [f"id {item}"]
    if meta.get("modality"):
        parts.append(str(meta["modality"]))
    if field and field != "modality":
        parts.append(f"{field}: {meta.get(field)}")
    return " · ".join(parts)


def _thumbnails(
    metadata: list[dict[str, Any]], rng: np.random.Generator, config: MapConfig
) -> tuple[list[str], list[int]]:
    """Thumbnails of sampled images (in a random order) until the byte budget is spent."""
    thumbs: list[str] = []
    thumb_of = [-1] * len(metadata)
    images = [i for i, m in enumerate(metadata) if m.get("path") and m.get("modality", "image") == "image"]
    spent = 0
    with progress_bar(len(images), config.progress, "thumbnails") as bar:
        for i in rng.permutation(images).tolist() if images else []:
            bar.update(1)
            uri = data_uri_thumbnail(metadata[i]["path"], config.thumbnail_px)
            if uri is None:
                continue
            if spent + len(uri) > config.thumbnail_bytes:
                break
            spent += len(uri)
            thumb_of[i] = len(thumbs)
            thumbs.append(uri)
    return thumbs, thumb_of


def _png(xy: np.ndarray, colours: dict[str, Any], field: str | None, px: int, subtitle: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(px / dpi, px / dpi), dpi=dpi)
    ax = fig.add_subplot()
    size = 2 if len(xy) > 20_000 else 6 if len(xy) > 2_000 else 16
    codes = colours["c"]
    if colours["kind"] == "numeric":
        values = np.array([np.nan if v is None else v for v in codes], dtype=float)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap="viridis", linewidths=0)
        bar = fig.colorbar(points, ax=ax, shrink=0.6)
        bar.set_label(f"{field} (scaled {colours['range'][0]:g} - {colours['range'][1]:g})")
    else:
        codes_arr = np.asarray(codes)
        for k, name in enumerate(colours["categories"] or [""]):
            key = -1 if name == OTHER else k
            mask = codes_arr == key if colours["kind"] == "categorical" else np.ones(len(xy), dtype=bool)
            colour = "#bbbbbb" if key < 0 else PALETTE[k % len(PALETTE)]
            ax.scatter(
                xy[mask, 0], xy[mask, 1], s=size, c=colour, label=name or None, linewidths=0, alpha=0.8
            )
        if colours["categories"]:
            ax.legend(title=field, markerscale=max(1.0, 8 / size), fontsize=9, loc="best")
    ax.set_title(subtitle)
    ax.set_xticks([])
    ax.set_yticks([])
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
