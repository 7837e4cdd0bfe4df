"""The media behind an item: its bytes, its file type, its size, a thumbnail.

An image item's ``path`` metadata is what :mod:`retrieval.data` reads: a file path, a member of a
webdataset shard (``tar://SHARD#MEMBER``) or image bytes in a table row (``parquet://FILE#col/row``,
``arrow://...``). A caption item of a pair carries its image's reference in ``path`` too. Every read
goes through :func:`retrieval.data.images.read_ref_bytes`, so the corpus tools read exactly what
``embed`` read; decoding (thumbnails, pixel counts) through the bounded decoder.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from retrieval.data.images import TAR_PREFIX, load_image, read_ref_bytes, split_tar_ref
from retrieval.data.refs import is_row_ref

__all__ = ["data_uri_thumbnail", "extension", "pixel_count", "read_media"]

# file signatures of the image formats the toolkit decodes -> extension
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_KNOWN = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def read_media(ref: str) -> bytes:
    """The bytes an image reference names; :class:`~retrieval.data.ImageDecodeError` when unreadable."""
    return read_ref_bytes(ref)


def extension(ref: str | None, data: bytes) -> str:
    """The file extension of image ``data`` (from its signature, else from its reference)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    name = ""
    if ref:
        name = split_tar_ref(ref)[1] if ref.startswith(TAR_PREFIX) else ("" if is_row_ref(ref) else ref)
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix in _KNOWN else ".bin"


def pixel_count(ref: str) -> int:
    """Width times height of the image ``ref`` names, read from its header (``-1`` when unreadable)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(read_ref_bytes(ref))) as image:
            width, height = image.size
    except Exception:  # a broken image is the least preferred, not an error
        return -1
    return int(width) * int(height)


def data_uri_thumbnail(ref: Any, px: int, *, quality: int = 70) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of at most ``px`` x ``px`` pixels, or ``None`` when
    the image cannot be read (decoding is bounded: :func:`retrieval.data.load_image`)."""
    try:
        image = load_image(ref)
    except (ValueError, OSError):
        return None
    image.thumbnail((px, px))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
