"""The one error type the service raises for bad requests, and its JSON shape."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


class ApiError(HTTPException):
    """A request the service refuses: ``status`` (4xx), a short machine ``code`` and a readable message.

    Rendered as ``{"error": code, "detail": message}``. It derives from Starlette's
    ``HTTPException`` so it passes unchanged through FastAPI's body parsing.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes. Text a client sent may hold lone surrogates (JSON's ``"\\ud800"``
    escape decodes to one), which UTF-8 cannot carry; they are written back as that same escape."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", errors="backslashreplace")
