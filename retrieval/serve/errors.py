"""The one error type the service raises for bad requests, and its JSON shape."""

from __future__ import annotations

from starlette.exceptions import HTTPException


class ApiError(HTTPException):
    """A request the service refuses: ``status`` (4xx), a short machine ``code`` and a readable message.

    Rendered as ``{"error": code, "detail": message}``. It derives from Starlette's
    ``HTTPException`` so it passes unchanged through FastAPI's body parsing.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)
