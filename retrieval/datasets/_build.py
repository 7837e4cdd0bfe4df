"""What every ready-made dataset builder shares: the split by family, the cache check, rendering
the missing PNGs and writing the manifests.

A builder names its records (each with an ``id``, a ``split`` and whatever its rows carry), says
how one record is rendered and which manifest rows it gives; this module does the rest the same
way for every dataset: PNGs under ``<root>/<size>px/images/``, one JSONL manifest per split with
image paths relative to it, and ``dataset.json`` whose ``settings`` decide whether a second build
with the same settings is a cache hit (then nothing is rendered).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from retrieval.io import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class Record(Protocol):
    """What the shared steps read of a dataset's record."""

    @property
    def id(self) -> str: ...

    @property
    def split(self) -> str: ...


def package_version(name: str) -> str:
    """The installed version of a distribution, or ``"absent"`` (part of a build's settings)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def rank(seed: int, key: str) -> str:
    """A seeded, platform-independent sort key for ``key``."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative shares (train, val, test) summing to 1, received {tuple(fractions)}"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def assign_splits(
    family_of: dict[str, str], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Families in a seeded hash order fill test, then val, up to their share of items; the rest
    is train. A family larger than a tenth of a split's share (e.g. the ~100 skin-tone pairs of
    "kiss") goes to train, so one family cannot dominate a small evaluation split."""
    sizes: dict[str, int] = {}
    for family in family_of.values():
        sizes[family] = sizes.get(family, 0) + 1
    order = sorted(sizes, key=lambda f: rank(seed, f))
    total = len(family_of)
    targets = {"test": fractions[2] * total, "val": fractions[1] * total}
    split_of_family: dict[str, str] = {}
    filled = {"test": 0, "val": 0}
    for family in order:
        split_of_family[family] = "train"
        for split in ("test", "val"):
            if filled[split] < targets[split] and sizes[family] <= max(1.0, 0.1 * targets[split]):
                split_of_family[family] = split
                filled[split] += sizes[family]
                break
    return {key: split_of_family[family] for key, family in family_of.items()}


def manifest_paths(manifest_dir: Path) -> dict[str, Path]:
    return {split: manifest_dir / f"{split}.jsonl" for split in SPLITS}


def images_present(manifests: Iterable[Path]) -> bool:
    """Whether every image a manifest names exists (a cache hit needs them all)."""
    for manifest in manifests:
        seen: set[str] = set()
        with open(manifest, encoding="utf-8") as fh:
            for line in fh:
                image = json.loads(line)["image"]
                if image not in seen:
                    seen.add(image)
                    if not (manifest.parent / image).exists():
                        return False
    return True


def cached_info(manifest_dir: Path, settings: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """``dataset.json`` of an earlier build with the same ``settings`` whose manifests and images
    are all present, else None (build again)."""
    info_path = manifest_dir / "dataset.json"
    manifests = manifest_paths(manifest_dir)
    if force or not info_path.exists() or not all(p.exists() for p in manifests.values()):
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("settings") == settings and images_present(manifests.values()):
        return info
    return None


def render_missing(
    records: Sequence[Record],
    image_dir: Path,
    render: Callable[[Any], bytes],
    *,
    force: bool,
    progress: bool | None,
    desc: str,
    unit: str,
) -> int:
    """Render ``<image_dir>/<id>.png`` for each record that lacks it (all with ``force``); returns
    how many were rendered. An interrupted build resumes: PNGs already written are kept.

    With more than :data:`PARALLEL_FROM` to render and a picklable ``render`` (a module-level
    function, or a ``functools.partial`` of one), the renderer runs in one process per core (the
    SVG renderers hold the GIL: threads gain nothing); this process writes the PNGs, in order."""
    image_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if force or not (image_dir / f"{r.id}.png").exists()]
    if todo:
        from tqdm.auto import tqdm

        show = sys.stderr.isatty() if progress is None else progress
        with _rendered(render, todo) as pngs:
            for record, png in tqdm(zip(todo, pngs), total=len(todo), desc=desc, unit=unit, disable=not show):
                # No fsync: thousands of small files; a lost one is noticed and rendered again.
                atomic_write_bytes(image_dir / f"{record.id}.png", png, durable=False)
        logger.info("rendered %d PNGs into %s", len(todo), image_dir)
    return len(todo)


PARALLEL_FROM = 200  # images to render from which rendering runs in worker processes


@contextlib.contextmanager
def _rendered(render: Callable[[Any], bytes], todo: Sequence[Any]) -> Iterator[Iterable[bytes]]:
    """The PNG of each of ``todo``, in order: from worker processes when that pays, else here."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(todo) < PARALLEL_FROM or not _picklable(render, todo[0]):
        yield (render(record) for record in todo)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: the caller may hold threads (torch's, a server's) a fork would copy locked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunk = max(1, min(64, len(todo) // (workers * 8)))
        try:
            yield pool.map(render, todo, chunksize=chunk)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _picklable(*values: Any) -> bool:
    import pickle

    try:
        pickle.dumps(values)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def write_manifests(
    manifest_dir: Path,
    image_dir: Path,
    records: Sequence[Record],
    rows: Callable[[Any, str], Iterable[dict[str, Any]]],
    info: dict[str, Any],
) -> dict[str, dict[str, int]]:
    """Write one JSONL manifest per split and ``dataset.json`` (``info`` plus the counts);
    returns the counts. ``rows(record, image)`` gives a record's manifest rows, ``image`` being
    its PNG's path relative to the manifest."""
    manifest_dir.mkdir(parents=True, exist_ok=True)
    rel_images = os.path.relpath(image_dir, manifest_dir)
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    counts = {split: {"images": 0, "captions": 0} for split in SPLITS}
    for record in records:
        counts[record.split]["images"] += 1
        for row in rows(record, f"{rel_images}/{record.id}.png"):
            lines[record.split].append(json.dumps(row, ensure_ascii=False))
            counts[record.split]["captions"] += 1
    for split, path in manifest_paths(manifest_dir).items():
        atomic_write_text(path, "".join(line + "\n" for line in lines[split]))
    full = {"name": info["name"], "settings": info["settings"], "counts": counts, **info}
    atomic_write_text(manifest_dir / "dataset.json", json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    return counts


def render_svg_png(
    size: int, *, path: str | os.PathLike[str] | None = None, text: str | None = None
) -> bytes:
    """Render an SVG (a file ``path`` or a document ``text``) to an RGB PNG of ``size`` x ``size``
    pixels on white, with ``resvg-py`` (``cairosvg`` as a fallback)."""
    from PIL import Image

    if (path is None) == (text is None):
        raise ValueError("render_svg_png needs exactly one of path= or text=")
    try:
        import resvg_py

        source = {"svg_path": str(path)} if path is not None else {"svg_string": text}
        png = resvg_py.svg_to_bytes(
            **source, width=size, height=size, background="#ffffff", skip_system_fonts=True
        )
    except ImportError:
        try:
            import cairosvg
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "rendering SVGs needs an SVG renderer: pip install resvg-py (or cairosvg)"
            ) from exc
        source = {"url": str(path)} if path is not None else {"bytestring": str(text).encode("utf-8")}
        png = cairosvg.svg2png(**source, output_width=size, output_height=size, background_color="white")
    image = Image.open(io.BytesIO(bytes(png)), formats=("PNG",))
    if image.mode != "RGB":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        image = canvas
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
