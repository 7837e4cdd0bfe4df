"""Serving item images: only files inside a collection's declared media root."""

from __future__ import annotations

import os
from pathlib import Path

from retrieval.serve.errors import ApiError, not_found

# Metadata fields that may hold an item's image file, in order of preference.
IMAGE_FIELDS = ("path", "image_path", "image")
# Image types the media endpoint serves, by suffix.
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}


# Magic numbers of the image types served from bytes that carry no file name (a row of a table file).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _sniffed(data: bytes) -> str | None:
    """The media type of image bytes from their first bytes, ``None`` for a type not served."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_media(root: Path, ref: str) -> tuple[Path | bytes, str]:
    """Resolve an item's image reference against ``root``; anything that ends up outside the
    root (``..``, absolute paths elsewhere, symlinks pointing out) is refused with a 403."""
    from retrieval.data.images import TAR_PREFIX, read_ref_bytes, split_tar_ref
    from retrieval.data.refs import is_row_ref

    if "\x00" in ref:  # no file has such a name (and os.path functions raise on it)
        raise not_found("missing_image", "the item's image reference is not a file name")
    root_real = os.path.realpath(root)
    if is_row_ref(ref):
        return _row_media(root, root_real, ref)
    member = None
    target = ref
    if ref.startswith(TAR_PREFIX):
        try:
            target, member = split_tar_ref(ref)
        except ValueError as exc:
            raise not_found("no_image", str(exc)) from None
    candidate = Path(target) if os.path.isabs(target) else root / target
    real = os.path.realpath(candidate)
    if not _inside(real, root_real):
        raise ApiError(
            403, "outside_media_root", "the item's image lies outside the collection's media root; refused"
        )
    suffix = Path(member if member is not None else real).suffix.lower()
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None:
        raise ApiError(403, "not_an_image", f"the item's file type {suffix or '(none)'!r} is not served")
    if not os.path.isfile(real):
        raise not_found("missing_image", "the item's image file does not exist")
    if member is None:
        return Path(real), media_type
    try:
        return read_ref_bytes(f"{TAR_PREFIX}{real}#{member}"), media_type
    except ValueError:
        raise not_found("missing_image", "the item's image is not in its shard") from None


def _row_media(root: Path, root_real: str, ref: str) -> tuple[bytes, str]:
    """The image bytes in a row of a Parquet / Arrow file inside ``root``, typed by their content."""
    from retrieval.data.refs import read_row_bytes, row_ref, split_row_ref

    try:
        kind, target, column, row = split_row_ref(ref)
    except ValueError as exc:
        raise not_found("no_image", str(exc)) from None
    real = os.path.realpath(Path(target) if os.path.isabs(target) else root / target)
    if not _inside(real, root_real):
        raise ApiError(
            403, "outside_media_root", "the item's image lies outside the collection's media root; refused"
        )
    if not os.path.isfile(real):
        raise not_found("missing_image", "the item's table file does not exist")
    try:
        data = read_row_bytes(row_ref(kind, real, column, row))
    except OSError:
        raise not_found("missing_image", "the item's row holds no readable image bytes") from None
    media_type = _sniffed(data)
    if media_type is None:
        raise ApiError(403, "not_an_image", "the item's bytes are not an image type that is served")
    return data, media_type
