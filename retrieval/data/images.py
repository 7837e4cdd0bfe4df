"""Safe image decoding: every broken input becomes :class:`ImageDecodeError`, never a crash.

An image reference is a local path, raw bytes, or ``"tar://<abs shard path>#<member name>"``
for a file inside a webdataset shard. Decoding applies the EXIF orientation, composites
transparency (RGBA, LA, palette with transparency) on white, converts everything to RGB and
refuses images larger than ``max_pixels`` (decompression bombs). Only the raster formats in
:data:`ACCEPTED_FORMATS` are ever handed to a decoder: Pillow's other plugins include ones that
shell out (EPS runs Ghostscript when it is installed) or parse rarely audited formats.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.data.refs import is_row_ref, read_row_bytes

# 89 million pixels is Pillow's own warning threshold; above it we refuse to decode.
DEFAULT_MAX_PIXELS = 89_478_485
TAR_PREFIX = "tar://"
# Pillow format names tried when decoding (uploads, corpora, served thumbnails); anything else is refused.
# (Pillow's JPEG reader also opens the multi-picture JPEGs (MPO) many cameras write.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageDecodeError(ValueError):
    """An image could not be read or decoded (missing, corrupt, truncated, too large)."""


def tar_ref(shard: str | os.PathLike[str], member: str) -> str:
    """The reference of ``member`` inside the tar ``shard`` (absolute path)."""
    return f"{TAR_PREFIX}{Path(shard).resolve()}#{member}"


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def split_tar_ref(ref: str) -> tuple[str, str]:
    """``"tar://<shard>#<member>"`` -> ``(shard, member)``.

    Folder names may hold ``#`` too: the shard is the first prefix ending before a ``#`` that is an
    existing file, else the first ending in a tar suffix (``.tar``, ``.tar.gz``, ...), else the
    text before the first ``#``."""
    body = ref[len(TAR_PREFIX) :]
    cuts = [i for i, ch in enumerate(body) if ch == "#" and 0 < i < len(body) - 1]
    for fits in (os.path.isfile, lambda shard: shard.lower().endswith(_TAR_SUFFIXES)):
        for i in cuts:
            if fits(body[:i]):
                return body[:i], body[i + 1 :]
    shard, sep, member = body.partition("#")
    if not sep or not shard or not member:
        raise ImageDecodeError(
            f"malformed tar reference {ref!r}: expected 'tar://<shard path>#<member name>'"
        )
    return shard, member


@functools.lru_cache(maxsize=32)
def _tar_index(shard: str, mtime_ns: int, size: int) -> dict[str, tuple[int, int]] | None:
    """``member -> (data offset, size)`` of an uncompressed shard, read once per process (and per shard
    version); ``None`` for compressed shards, whose offsets cannot be seeked to."""
    with open(shard, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
        return None
    with tarfile.open(shard, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


def _read_tar_member(shard: str, member: str) -> bytes:
    stat = os.stat(shard)
    index = _tar_index(shard, stat.st_mtime_ns, stat.st_size)
    if index is None:
        with tarfile.open(shard, "r") as tar:
            fh = tar.extractfile(member)
            if fh is None:
                raise ImageDecodeError(f"{member!r} in {shard} is not a regular file")
            return fh.read()
    if member not in index:
        raise ImageDecodeError(f"cannot read image {member!r}: no such member in {shard}")
    offset, size = index[member]
    with open(shard, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise ImageDecodeError(f"{member!r} in {shard} is cut off ({len(data)} of {size} bytes)")
    return data


def read_ref_bytes(ref: str | os.PathLike[str]) -> bytes:
    """The raw bytes behind an image reference; :class:`ImageDecodeError` when unreadable."""
    text = str(ref)
    try:
        if text.startswith(TAR_PREFIX):
            return _read_tar_member(*split_tar_ref(text))
        if is_row_ref(text):  # image bytes in a row of a Parquet / Arrow file (retrieval.data.refs)
            return read_row_bytes(text)
        return Path(text).read_bytes()
    except ImageDecodeError:
        raise
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ImageDecodeError(f"cannot read image {text}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``: transparency composited on white, grayscale/CMYK/16-bit converted."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale to 8 bits before converting.
        image = (
            image.convert("I").point(lambda v: v * (1.0 / 256.0)).convert("L")
            if image.mode != "F"
            else image.convert("L")
        )
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(
    ref: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode an image safely into an RGB ``PIL.Image``.

    ``ref`` is a path, raw bytes or a ``tar://`` reference. Raises :class:`ImageDecodeError`
    (a ``ValueError``) when the file is missing, unreadable, corrupt, truncated, or has more
    than ``max_pixels`` pixels (``None`` disables this limit; Pillow's own ``Image.MAX_IMAGE_PIXELS``
    check still applies). Pillow may warn about corrupt metadata it skips.

    ``reduce_to`` (for previews, never for a model's input) lets the decoder stop at a smaller scale
    whose sides are still at least that many pixels: a JPEG decodes at 1/2, 1/4 or 1/8 of its size,
    a fraction of the work and memory of a full decode.
    """
    name = "<bytes>" if isinstance(ref, (bytes, bytearray)) else str(ref)
    data = bytes(ref) if isinstance(ref, (bytes, bytearray)) else read_ref_bytes(ref)
    try:
        # No warnings.catch_warnings() here: it is not thread-safe, and decoding runs in threads (serving).
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as probe:
            width, height = probe.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(
                    f"image {name} has {width}x{height} = {width * height} pixels, more than max_pixels="
                    f"{max_pixels}: refusing to decode (possible decompression bomb); raise max_pixels to allow it"
                )
            if reduce_to is not None and probe.format == "JPEG":
                probe.draft(probe.mode, (reduce_to, reduce_to))
            probe.load()  # full decode: truncated data raises here
            try:
                image = ImageOps.exif_transpose(probe) or probe
            except Exception:  # malformed EXIF: keep the pixels, skip the rotation
                image = probe
            rgb = to_rgb(image)
            # exif_transpose and the conversions return new images; only the probe itself needs a copy
            # (it is closed on leaving this block).
            return rgb.copy() if rgb is probe else rgb
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"cannot decode image {name}: not a readable image in an accepted format ({', '.join(ACCEPTED_FORMATS)}); "
            "convert it to one of them"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image {name} is too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow's plugins raise many types on hostile input; all mean "unusable"
        raise ImageDecodeError(f"cannot decode image {name}: {type(exc).__name__}: {exc}") from exc
