"""The Material Design Icons image-caption dataset, built offline from one PyPI package.

* Images: the 7,447 SVGs of ``material-design-icons-pack`` (a redistribution of the ``@mdi/svg``
  set, https://pictogrammers.com/library/mdi/, Apache License 2.0), rendered black on white with
  ``resvg-py`` (``cairosvg`` as a fallback), like :mod:`retrieval.datasets.openmoji`.
* Captions: the icon's slug in words (``account-alert-outline`` -> ``"account alert outline"``),
  one caption per icon.

The split is by *icon family*: trailing variant words (``outline``, ``off``, ``plus``, ``minus``,
``check``, ``remove``, ``edit``, ``multiple``, ``variant``, ...) are stripped from the slug until
none is left, and what remains names the family (``account-alert-outline``, ``account-alert``,
``account-off`` and ``account`` are all family ``account``). A family lies wholly in train, val or
test, so a test icon's variants are unseen in training.

Output (``build_icons``): PNGs under ``<out>/<size>px/images/`` and the JSONL manifests
``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of the same format as OpenMoji's (``image``
relative to the manifest, ``caption``, ``id`` and metadata), plus ``dataset.json``. A second build
with the same settings renders nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.datasets._build import (
    assign_splits,
    cached_info,
    check_fractions,
    manifest_paths,
    package_version,
    rank,
    render_missing,
    render_svg_png,
    write_manifests,
)
from retrieval.paths import cache_dir

logger = logging.getLogger(__name__)

__all__ = ["IconRecord", "IconsDataset", "build_icons", "icon_family", "icons_catalogue", "render_svg_text"]

_BUILDER_VERSION = 1  # bump when the manifest layout or the captions change
PACKAGE = "material-design-icons-pack"
LICENSE = "Apache-2.0"
ATTRIBUTION = "Material Design Icons by Pictogrammers (https://pictogrammers.com), Apache License 2.0"

# trailing slug words that make a variant of an icon rather than another icon
VARIANT_WORDS = frozenset(
    {
        "outline", "off", "plus", "minus", "remove", "check", "edit", "multiple", "variant", "circle",
        "box", "cancel", "lock", "alert", "sync", "settings", "star", "search", "cog", "clock", "open",
        "outlined", "thick", "bold", "sharp", "filled", "fill", "half", "full", "empty", "network",
        "arrow", "up", "down", "left", "right", "horizontal", "vertical", "small", "large", "heart",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class IconRecord:
    """One icon of the catalogue (before rendering)."""

    id: str  # the slug, e.g. "account-alert-outline"
    caption: str  # the slug in words, e.g. "account alert outline"
    family: str  # the slug without trailing variant words, e.g. "account"
    deprecated: bool  # marked deprecated upstream
    split: str  # "train" | "val" | "test"
    svg: str  # the SVG document


@dataclasses.dataclass(frozen=True)
class IconsDataset:
    """Where a built dataset lives and what it holds."""

    root: Path  # folder of the manifests and dataset.json
    manifests: dict[str, Path]  # split -> manifest path
    counts: dict[str, dict[str, int]]  # split -> {"images": n, "captions": m}
    rendered: int  # PNGs rendered by this call (0 when everything was cached)

    @property
    def train(self) -> Path:
        return self.manifests["train"]

    @property
    def val(self) -> Path:
        return self.manifests["val"]

    @property
    def test(self) -> Path:
        return self.manifests["test"]


def icon_family(slug: str) -> str:
    """The slug without its trailing variant words (at least one word is kept)."""
    words = slug.split("-")
    while len(words) > 1 and words[-1] in VARIANT_WORDS:
        words.pop()
    return "-".join(words)


def _icons() -> list[Any]:
    try:
        import material_design_icons_pack as mdi
    except ImportError as exc:
        raise ImportError(
            f"the icons dataset needs the package {PACKAGE!r}, which is not installed: "
            f"pip install {PACKAGE} (or the toolkit's demo extra)"
        ) from exc
    icons = {}
    for name in dir(mdi):
        value = getattr(mdi, name)
        if hasattr(value, "svg") and hasattr(value, "slug") and isinstance(value.slug, str):
            icons[value.slug] = value
    return [icons[slug] for slug in sorted(icons)]


def icons_catalogue(
    *, limit: int | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[IconRecord]:
    """List the icons with captions, families and splits (nothing is rendered), sorted by slug.
    ``limit`` keeps that many icons from families taken in a seeded hash order."""
    fracs = check_fractions(fractions)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of icons or None, received {limit}")
    icons = _icons()
    if limit is not None:
        order = sorted(icons, key=lambda icon: (rank(seed, icon_family(icon.slug)), icon.slug))
        icons = sorted(order[:limit], key=lambda icon: icon.slug)
    family_of = {icon.slug: icon_family(icon.slug) for icon in icons}
    split_of = assign_splits(family_of, fracs, seed)
    return [
        IconRecord(
            id=icon.slug,
            caption=icon.slug.replace("-", " "),
            family=family_of[icon.slug],
            deprecated=bool(getattr(icon, "deprecated", False)),
            split=split_of[icon.slug],
            svg=icon.svg,
        )
        for icon in icons
    ]


def render_svg_text(svg: str, size: int) -> bytes:
    """Render an SVG document (a string) to an RGB PNG of ``size`` x ``size`` pixels on white."""
    return render_svg_png(size, text=svg)


def _render_record(record: IconRecord, size: int) -> bytes:
    return render_svg_text(record.svg, size)


def build_icons(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    size: int = 48,
    limit: int | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool | None = None,
    force: bool = False,
) -> IconsDataset:
    """Render the Material Design Icons and write train/val/test manifests; cached.

    Args:
        out_dir: where to build; default ``retrieval.paths.cache_dir("icons")``.
        size: PNG side in pixels (the icons are drawn on a 24-unit grid).
        limit: keep only this many icons (whole families), for quick runs and tests.
        fractions: (train, val, test) shares of the icons, split by icon family.
        seed: seeds the family order (which families go to val/test).
        progress: show a progress bar; default: when stderr is a terminal.
        force: re-render every PNG and rewrite the manifests.
    """
    if size < 8 or size > 1024:
        raise ValueError(f"size must be between 8 and 1024 pixels, received {size}")
    fracs = check_fractions(fractions)
    root = Path(out_dir) if out_dir is not None else cache_dir("icons")
    image_dir = root / f"{size}px" / "images"
    manifest_dir = root / f"{size}px" if limit is None else root / f"{size}px" / f"limit-{limit}-seed-{seed}"
    settings = {
        "builder": _BUILDER_VERSION,
        "package": package_version(PACKAGE),
        "size": size,
        "limit": limit,
        "fractions": list(fracs),
        "seed": seed,
    }
    manifests = manifest_paths(manifest_dir)
    info = cached_info(manifest_dir, settings, force)
    if info is not None:
        logger.info("icons dataset cached at %s", manifest_dir)
        return IconsDataset(root=manifest_dir, manifests=manifests, counts=info["counts"], rendered=0)

    records = icons_catalogue(limit=limit, fractions=fracs, seed=seed)
    rendered = render_missing(
        records,
        image_dir,
        functools.partial(_render_record, size=size),
        force=force,
        progress=progress,
        desc=f"rendering icons at {size}px",
        unit="icon",
    )

    def rows(record: IconRecord, image: str) -> list[dict[str, Any]]:
        return [
            {
                "image": image,
                "caption": record.caption,
                "id": record.id,
                "family": record.family,
                "deprecated": record.deprecated,
                "split": record.split,
            }
        ]

    info = {
        "name": "material-design-icons",
        "settings": settings,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        "source": f"PyPI package {PACKAGE} (a redistribution of the @mdi/svg npm package)",
        "manifest_format": "JSONL, one row per image-caption pair; image paths relative to the manifest",
    }
    counts = write_manifests(manifest_dir, image_dir, records, rows, info)
    return IconsDataset(root=manifest_dir, manifests=manifests, counts=counts, rendered=rendered)
