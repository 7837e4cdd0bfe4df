"""Checking what clients send: request size and shape, images, base64, texts, filters.

Everything here turns bad input into :class:`~retrieval.serve.errors.ApiError` (a 4xx with a
JSON body naming the problem); nothing here lets an exception reach the client as a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from PIL import Image

from retrieval.serve.errors import ApiError, bad_request, too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Operators a range filter may use (the collection's filter language).
RANGE_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})
_SCALARS = (str, int, float, bool)


# Body limits by endpoint: a JSON query or filter needs kilobytes; only image uploads need megabytes.
JSON_BODY_LIMIT = 64 * 1024
EMBEDDING_BODY_LIMIT = 1024 * 1024  # a query vector as JSON text: room for tens of thousands of dims
# Deepest JSON nesting accepted anywhere (a filter needs 3 levels); deeper text is refused before parsing.
MAX_JSON_DEPTH = 32
# Bodies larger than this are checked and parsed in a worker thread, away from the event loop.
_INLINE_BYTES = 256 * 1024

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """How deeply the arrays and objects of the JSON text ``data`` nest (0 for a scalar), in
    linear time without parsing it (so no ``RecursionError``); brackets inside strings do not count."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)  # [n]
    return int(np.cumsum(steps).max())


def parse_json(data: bytes | str, what: str = "the request body") -> Any:
    """JSON text -> value, with a 400 ``bad_json`` for invalid or too deeply nested text."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else data
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise bad_request("bad_json", f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data or b"null")
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise bad_request("bad_json", f"{what} nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit limit
        raise bad_request("bad_json", f"{what} is not valid JSON: {str(exc)[:200]}") from None


def body_limit(path: str, image_bytes: int) -> int:
    """The largest body accepted on ``path``: ``image_bytes`` where an image is uploaded (as a
    file or base64), a megabyte for query vectors, :data:`JSON_BODY_LIMIT` everywhere else."""
    if path.endswith("/search/image") or path == "/knn-service":
        return image_bytes
    if path.endswith("/search/embedding"):
        return EMBEDDING_BODY_LIMIT
    return JSON_BODY_LIMIT


class _BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body is larger than {limit} bytes; send a smaller one")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit_for(path)`` bytes: by ``Content-Length`` up front, and by
    counting the bytes actually received (chunked uploads, lying headers) while the body streams in.

    A body that is not a form (JSON, or text sent as JSON by clip-retrieval's clients) is read
    whole, then its nesting depth is checked (in a worker thread when large) before the
    application parses it: too deep is a 400, never a ``RecursionError``."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit_for: Callable[[str], int]
    ) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        content_type = b""
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isdigit():
                    await _send_json(send, 400, "bad_request", f"invalid Content-Length header {text!r}")
                    return
                if int(text) > limit:
                    await _send_json(
                        send, 413, "too_large", f"request body of {text} bytes is larger than {limit} bytes"
                    )
                    return
        if scope["method"] in ("POST", "PUT", "PATCH") and not content_type.startswith(
            (b"multipart/", b"application/x-www-form-urlencoded")
        ):
            await self._buffered(scope, receive, send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, "too_large", f"request body is larger than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        depth = await asyncio.to_thread(json_depth, body) if size > _INLINE_BYTES else json_depth(body)
        if depth > MAX_JSON_DEPTH:
            await _send_json(
                send, 400, "bad_json", f"the request body nests deeper than {MAX_JSON_DEPTH} levels"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Send, status: int, code: str, detail: str) -> None:
    """An error answered before (the rest of) the body was read: the connection ends after it."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes of an uploaded image -> RGB ``PIL.Image``, refusing empty, oversized, undecodable and
    bomb-sized images with a 4xx."""
    from retrieval.data import ImageDecodeError, load_image

    if not data:
        raise bad_request("bad_image", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise too_large(f"the image has {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise bad_request("bad_image", f"cannot use the query image: {exc}") from None


_BASE64_SPACE = re.compile(r"\s+")


def decode_base64(text: Any, *, max_bytes: int) -> bytes:
    """A base64 string (optionally a ``data:...;base64,`` URL) -> bytes, with a size check first.

    Standard or URL-safe alphabet, line breaks and missing padding are accepted; any other
    character makes it invalid base64 (never an "empty image")."""
    if not isinstance(text, str):
        raise bad_request("bad_image", f"the image must be a base64 string, received {type(text).__name__}")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    if len(text) * 3 // 4 > max_bytes + 3:
        raise too_large(f"the base64 image decodes to more than the limit of {max_bytes} bytes")
    compact = _BASE64_SPACE.sub("", text)
    if not compact:
        raise bad_request("bad_image", "the base64 image is empty")
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        shown = next((ch for ch in compact if not (ch.isascii() and (ch.isalnum() or ch in "+/="))), None)
        why = (
            f"it holds {shown!r}, which is not a base64 character"
            if shown
            else "its length or padding is wrong"
        )
        raise bad_request("bad_image", f"the image is not valid base64: {why}") from None
    if not data:
        raise bad_request("bad_image", "the base64 image is empty")
    return data


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode text (no lone surrogates, which JSON's ``\\ud800`` escapes can carry)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(text: Any, max_chars: int) -> str:
    if not isinstance(text, str):
        raise bad_request("bad_text", f"text must be a string, received {type(text).__name__}")
    if not is_unicode(text):
        raise bad_request(
            "bad_text",
            "the text query holds a lone surrogate (half of a UTF-16 pair, e.g. \\ud800), which is not "
            "Unicode text; send the whole character",
        )
    stripped = text.strip()
    if not stripped:
        raise bad_request("empty_text", "the text query is empty; type something to search for")
    if len(text) > max_chars:
        raise bad_request(
            "text_too_long", f"the text query has {len(text)} characters, more than the limit of {max_chars}"
        )
    return stripped


def check_k(k: Any, max_k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise bad_request("bad_k", f"{name} must be an integer, received {_shown(k)}")
    if not 1 <= k <= max_k:
        raise bad_request("bad_k", f"{name}={_shown(k)} is out of range: expected 1 <= {name} <= {max_k}")
    return k


def check_modality(modality: Any) -> str | None:
    if modality in (None, ""):
        return None
    if modality not in ("image", "text"):
        raise bad_request(
            "bad_modality", f"modality must be 'image' or 'text' (or omitted), received {modality!r}"
        )
    return str(modality)


def check_where(where: Any, fields: list[str]) -> dict[str, Any] | None:
    """Validate a metadata filter against the collection's fields (unknown fields are a 400)."""
    if where in (None, {}):
        return None
    if isinstance(where, str):
        try:
            where = parse_json(where, "where")
        except ApiError as exc:
            raise bad_request("bad_filter", str(exc.detail)) from None
        if where in (None, {}):
            return None
    if not isinstance(where, dict):
        raise bad_request(
            "bad_filter", f"where must be an object {{field: condition}}, received {_shown(where)}"
        )
    for text in _strings(where):
        if not is_unicode(text):
            raise bad_request(
                "bad_filter", "the filter holds a lone surrogate (e.g. \\ud800): not Unicode text"
            )
    unknown = sorted(set(where) - set(fields))
    if unknown:
        raise bad_request(
            "unknown_field", f"unknown filter field(s) {unknown}; this collection has fields {sorted(fields)}"
        )
    for field, cond in where.items():
        if isinstance(cond, _SCALARS):
            continue
        if isinstance(cond, list) and cond and all(isinstance(v, _SCALARS) for v in cond):
            continue
        if (
            isinstance(cond, dict)
            and cond
            and set(cond) <= RANGE_OPERATORS
            and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in cond.values())
        ):
            continue
        raise bad_request(
            "bad_filter",
            f"filter on {field!r} is {_shown(cond)}: expected a value, a non-empty list of values, or "
            f"an object with operators from {sorted(RANGE_OPERATORS)}",
        )
    return dict(where)


def _strings(value: Any) -> list[str]:
    """Every string (keys too) in a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def _shown(value: Any) -> str:
    """A client's value in a message: its repr, cut short (a repr of a huge int would raise)."""
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


def check_embedding(values: Any, dim: int, max_rows: int) -> np.ndarray:
    """A JSON vector (or list of vectors) -> float32 ``[n, dim]`` unit rows."""
    if not isinstance(values, list) or not values:
        raise bad_request("bad_embedding", "embedding must be a non-empty list of numbers (or of vectors)")
    rows = values if isinstance(values[0], list) else [values]
    if len(rows) > max_rows:
        raise bad_request("bad_embedding", f"{len(rows)} query vectors, more than the limit of {max_rows}")
    for row in rows:
        if not isinstance(row, list) or len(row) != dim:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise bad_request(
                "bad_embedding",
                f"query vector has dim {got}, this collection has dim {dim}: encode with its model",
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise bad_request("bad_embedding", "embedding values must all be numbers")
    array = np.asarray(rows, dtype=np.float64)  # [n, d]
    if not np.isfinite(array).all():
        raise bad_request("bad_embedding", "embedding contains NaN or infinite values")
    array = array / np.abs(array).max(axis=1, keepdims=True).clip(min=1e-300)  # [n, d]; no overflow below
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # [n, 1]
    if not (norms > 0).all():
        raise bad_request("bad_embedding", "embedding is all zeros; cannot normalise it")
    return (array / norms).astype(np.float32)  # [n, d] unit rows


def json_safe(value: Any) -> Any:
    """Metadata values as plain JSON types (numpy scalars, bytes, non-finite floats)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
