"""The FastAPI application: :func:`create_app` wires the :class:`~retrieval.serve.service.Service`,
limits, auth and routes.

Endpoints (OpenAPI docs at ``/docs``):

==========================================  =============================================
``GET  /``                                  the search page
``GET  /healthz``                           liveness and the served collection names
``GET  /collections``                       every collection's info
``GET  /collections/{name}``                count, dim, metric, index spec, fingerprints
``POST /collections/{name}/reload``         reopen a collection changed on disk
``POST /collections/{name}/search/text``    search by text
``POST /collections/{name}/search/image``   search by an uploaded image (multipart)
``POST /collections/{name}/search/url``     search by an image URL (only when enabled)
``POST /collections/{name}/search/embedding``  search by a raw query vector
``POST /collections/{name}/search/item``    search by a stored item's vector ("more like this")
``GET  /collections/{name}/items/{id}``     an item's metadata
``GET  /collections/{name}/items/{id}/image``  an item's image file (inside the media root only)
``POST /knn-service``, ``/indices-list``, ``POST /metadata``  clip-retrieval's back-end API
==========================================  =============================================
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.config import ServeConfig
from retrieval.serve.batching import Encoder
from retrieval.serve.clip_compat import clip_router
from retrieval.serve.errors import ApiError
from retrieval.serve.guards import BrowserGuardMiddleware, is_loopback
from retrieval.serve.inputs import BodyLimitMiddleware, body_limit
from retrieval.serve.routes import api_router
from retrieval.serve.service import Service

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
# Paths anyone may read without the API key: the page, liveness and the API description.
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico"}
)


# The page loads nothing from elsewhere and renders results as text, never as HTML.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(exc.code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            _error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        detail = "invalid request: " + "; ".join(problems)
        return JSONResponse(_error_body("invalid_request", detail), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(_error_body("internal", "internal error; see the server log"), status_code=500)


class ApiKeyMiddleware:
    """Require the ``X-API-Key`` header (when a key is configured) on everything but
    :data:`PUBLIC_PATHS`, and mark every response ``nosniff``. Plain ASGI, so errors raised while
    a body streams in (the size limit) reach the routes' error handling unchanged."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.key is not None and scope["method"] != "OPTIONS" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope.get("headers", ())).get(API_KEY_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.key):
                response = JSONResponse(
                    _error_body(
                        "unauthorized", f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
                    ),
                    status_code=401,
                )
                await response(scope, receive, send)
                return

        async def send_nosniff(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def _page() -> str:
    return resources.files("retrieval").joinpath("serve_static/index.html").read_text(encoding="utf-8")


def create_app(
    config: ServeConfig,
    *,
    model: Encoder | None = None,
    models: Mapping[str, Encoder] | None = None,
) -> FastAPI:
    """Build the service for ``config``: collections are opened and models loaded now, once.

    ``model`` / ``models`` pass already-built encoders (anything with ``encode_texts``,
    ``encode_images`` and ``fingerprint()``) instead of loading them from ``config.model`` /
    ``config.models`` directories. Raises ``ValueError`` for an unusable config, a collection
    built by another model, or a missing collection.
    """
    service = Service(config, model=model, models=models)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="siamese-retrieval",
        summary="Search image/text collections by text, image or embedding.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    _install_error_handlers(app)

    app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    # Base64 inflates an image by 4/3; leave room for the JSON or multipart around it.
    image_bytes = config.max_upload_bytes * 4 // 3 + 64 * 1024
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: body_limit(path, image_bytes))
    # Browser defences run before the body is read.
    app.add_middleware(
        BrowserGuardMiddleware,
        allowed_hosts=config.allowed_hosts,
        loopback_only=is_loopback(config.host),
        cors_origins=config.cors_origins,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER],
        )

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            _page(), headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP}
        )

    @app.get(
        "/healthz", tags=["service"], summary="Liveness: the service answers and which collections it serves"
    )
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "collections": sorted(service.collections)}

    app.include_router(api_router(service))
    app.include_router(clip_router(service))
    return app


def _version() -> str:
    from retrieval import __version__

    return __version__
