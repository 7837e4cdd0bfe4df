"""Who may call what: the API key, checked before anything else, and the reload permission.

* Every path but :data:`PUBLIC_PATHS` (the page, liveness, the API description and its assets)
  needs the ``X-API-Key`` header when a key is configured. The check runs before any other part
  of the service reads the request body, so an unauthenticated request costs its headers only: it
  is answered ``401`` at once (never ``100 Continue``), and its connection is ended when it
  announced a body.
* ``POST /collections/{name}/reload`` reopens a collection, which costs real work, so it has its
  own permission: with ``ServeConfig.reload_key`` set it needs ``X-Reload-Key`` with that value;
  without one it is open on a server without an API key (a local server) and refused on a server
  with one (collections still reload by themselves when they change on disk). It is also
  rate-limited per collection (``reload_min_interval``): a reload asked for sooner gets ``429``
  with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from retrieval.serve.errors import ApiError, SafeJSONResponse

__all__ = [
    "API_KEY_HEADER",
    "PUBLIC_PATHS",
    "RELOAD_KEY_HEADER",
    "ApiKeyMiddleware",
    "ReloadGate",
    "is_public",
]

API_KEY_HEADER = "X-API-Key"
RELOAD_KEY_HEADER = "X-Reload-Key"
# Paths anyone may read without the API key: the page, liveness and the API description.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/docs", "/redoc", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/docs/assets/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _announces_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0").strip()
    return b"transfer-encoding" in headers or not length.isdigit() or int(length) > 0


class ApiKeyMiddleware:
    """Plain ASGI middleware requiring ``X-API-Key`` (when a key is set) on everything but the public paths."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or self.key is None
            or scope["method"] == "OPTIONS"
            or is_public(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if hmac.compare_digest(headers.get(API_KEY_HEADER.lower().encode(), b""), self.key):
            await self.app(scope, receive, send)
            return
        # The body is never read: the connection ends after the answer (retrieval.serve.connections).
        response = SafeJSONResponse(
            {
                "error": "unauthorized",
                "detail": f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
            },
            status_code=401,
            headers={"Connection": "close"} if _announces_body(headers) else None,
        )
        await response(scope, receive, send)


class ReloadGate:
    """The reload permission and rate limit (module docstring)."""

    def __init__(self, api_key: str | None, reload_key: str | None, min_interval: float) -> None:
        self.api_key = api_key
        self.reload_key = reload_key.encode() if reload_key else None
        self.min_interval = float(min_interval)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._running: set[str] = set()

    def check(self, given: str | None) -> None:
        """Raise the 401/403 :class:`ApiError` unless the caller may reload."""
        if self.reload_key is not None:
            if not hmac.compare_digest((given or "").encode("utf-8", "surrogatepass"), self.reload_key):
                raise ApiError(
                    401,
                    "unauthorized",
                    f"reloading needs the reload key: send it in the {RELOAD_KEY_HEADER} header",
                )
            return
        if self.api_key:
            raise ApiError(
                403,
                "reload_disabled",
                "this server does not reload collections on request: start it with --reload-key to allow "
                "it; collections still reload by themselves when they change on disk (--reload-interval)",
            )

    @contextlib.contextmanager
    def slot(self, name: str) -> Iterator[None]:
        """Hold the right to reload collection ``name`` now, or raise 429."""
        now = time.monotonic()
        with self._lock:
            wait = self._last.get(name, -math.inf) + self.min_interval - now
            if name in self._running or wait > 0:
                seconds = max(1, math.ceil(wait)) if wait > 0 else 1
                raise ApiError(
                    429,
                    "too_many_reloads",
                    f"collection {name!r} was reloaded less than {self.min_interval:g} s ago (or is "
                    f"reloading); ask again in {seconds} s",
                    headers={"Retry-After": str(seconds)},
                )
            self._running.add(name)
            self._last[name] = now
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(name)
                self._last[name] = time.monotonic()
