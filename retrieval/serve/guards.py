"""Defences against requests a web page in the user's browser makes to the service.

A service on 127.0.0.1 without an API key is still reachable from any web page the user opens:

* **DNS rebinding**: a page on ``evil.example`` re-points its own name at 127.0.0.1 and then
  talks to the service as a same-origin site. The ``Host`` header still says ``evil.example``,
  so requests whose ``Host`` is not an allowed name are refused (``bad_host``). Allowed names
  are ``ServeConfig.allowed_hosts``, or, when that is empty and the service is bound to
  loopback, the loopback names (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``).
* **Cross-site posts**: a page may post a form (or a ``text/plain`` body) to any address
  without asking. State-changing and JSON endpoints refuse requests whose ``Origin`` (or
  ``Sec-Fetch-Site``) says they come from another site, unless that origin is in
  ``ServeConfig.cors_origins``; form content types are refused where JSON is expected
  (``unsupported_media_type``).
* ``reload`` is never callable from another origin, CORS or not.
* **Cross-site reads of media**: every response says ``Cross-Origin-Resource-Policy:
  same-origin`` (``cross-origin`` when ``cors_origins`` names other sites, whose pages must show
  the images), so a page elsewhere cannot even learn whether an item's image exists; and
  ``X-Content-Type-Options: nosniff``.

Non-browser clients (curl, ``requests``, clip-retrieval's ``ClipClient``) send no ``Origin``
and are unaffected.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BrowserGuardMiddleware", "SecurityHeadersMiddleware", "host_allowed", "is_loopback"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def _host_name(host: str) -> str:
    """``Host`` header value -> lower-case name without port (IPv6 literals without brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed: Iterable[str], loopback_only: bool) -> bool:
    """Whether a request's ``Host`` header names this service (see the module docstring)."""
    name = _host_name(host)
    names = {_host_name(a) for a in allowed}
    if "*" in names:
        return True
    if names:
        return name in names
    return is_loopback(name) if loopback_only else True


class BrowserGuardMiddleware:
    """Plain ASGI middleware enforcing the module docstring's rules."""

    def __init__(
        self,
        app: Any,
        *,
        allowed_hosts: Iterable[str],
        loopback_only: bool,
        cors_origins: Iterable[str],
    ) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)
        self.loopback_only = loopback_only
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())
        }
        host = headers.get("host", "")
        if host and not host_allowed(host, self.allowed_hosts, self.loopback_only):
            await _refuse(
                send,
                400,
                "bad_host",
                f"this service does not answer to the host name {_host_name(host)[:100]!r}; "
                "add it to the allowed hosts (ServeConfig.allowed_hosts) if you mean to use that name",
            )
            return
        problem = self._cross_site(scope, headers, host)
        if problem is not None:
            await _refuse(send, *problem)
            return
        await self.app(scope, receive, send)

    def _cross_site(self, scope: Any, headers: dict[str, str], host: str) -> tuple[int, str, str] | None:
        method, path = scope["method"], scope["path"]
        if method in _SAFE_METHODS:
            return None
        origin = headers.get("origin", "").strip().rstrip("/").lower()
        fetch_site = headers.get("sec-fetch-site", "").lower()
        same_origin = bool(origin) and origin != "null" and urlsplit(origin).netloc == host.strip().lower()
        if origin and not same_origin:
            from_browser_elsewhere = True
        else:
            from_browser_elsewhere = not origin and fetch_site in ("cross-site", "same-site")
        reload = path.endswith("/reload")
        allowed_elsewhere = not reload and (origin in self.cors_origins or "*" in self.cors_origins)
        if from_browser_elsewhere and not allowed_elsewhere:
            what = "reload" if reload else "this endpoint"
            return (
                403,
                "cross_origin",
                f"{what} does not accept requests from another site (Origin {origin!r})",
            )
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if path.endswith("/search/image"):
            return None  # the one form endpoint (multipart upload)
        expects_json_only = path.startswith("/collections/")
        refused = _FORM_TYPES if expects_json_only else _FORM_TYPES[:2]
        if content_type in refused:
            return (
                415,
                "unsupported_media_type",
                f"{path} takes a JSON body (Content-Type: application/json), not {content_type}",
            )
        return None


async def _refuse(send: Any, status: int, code: str, detail: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """``nosniff`` and ``Cross-Origin-Resource-Policy`` on every response (module docstring)."""

    def __init__(self, app: Any, *, cross_origin: bool) -> None:
        self.app = app
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-resource-policy", b"cross-origin" if cross_origin else b"same-origin"),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
