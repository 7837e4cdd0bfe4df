"""The FastAPI application: :func:`create_app` wires the :class:`~retrieval.serve.service.Service`,
limits, auth and routes.

Endpoints (OpenAPI docs at ``/docs`` and ``/redoc``, served offline: :mod:`~retrieval.serve.docs`):

==========================================  =============================================
``GET  /``                                  the search page (``/?q=...`` runs a query)
``GET  /healthz``                           liveness and the served collection names
``GET  /collections``                       every collection's info
``GET  /collections/{name}``                count, dim, metric, index spec, fingerprints
``POST /collections/{name}/reload``         reopen a collection changed on disk (reload permission)
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
import logging
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.config import ServeConfig
from retrieval.serve.auth import API_KEY_HEADER, PUBLIC_PATHS, RELOAD_KEY_HEADER, ApiKeyMiddleware
from retrieval.serve.batching import Encoder
from retrieval.serve.clip_compat import clip_router
from retrieval.serve.connections import RequestLimitMiddleware
from retrieval.serve.docs import install_docs
from retrieval.serve.errors import ApiError, SafeJSONResponse
from retrieval.serve.guards import BrowserGuardMiddleware, SecurityHeadersMiddleware, is_loopback
from retrieval.serve.inputs import BodyLimitMiddleware, body_limit
from retrieval.serve.routes import api_router
from retrieval.serve.service import Service

__all__ = ["API_KEY_HEADER", "PAGE_CSP", "PUBLIC_PATHS", "create_app"]

logger = logging.getLogger(__name__)


# The page loads nothing from elsewhere and renders results as text, never as HTML.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _install_error_handlers(app: FastAPI, service: Service) -> None:
    shown = service.paths.message  # server paths reduced to file names unless the operator shows them

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> SafeJSONResponse:
        return SafeJSONResponse(
            _error_body(exc.code, shown(str(exc.detail))), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return SafeJSONResponse(
            _error_body(code, shown(str(exc.detail))), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where[:100] or 'request'}: {err.get('msg', 'invalid')}")
        detail = "invalid request: " + "; ".join(problems)
        return SafeJSONResponse(_error_body("invalid_request", shown(detail)), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> SafeJSONResponse:  # pragma: no cover - a bug
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return SafeJSONResponse(
            _error_body("internal", "internal error; see the server log"), status_code=500
        )


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

    Requests pass, in order: security headers on every answer; CORS (when configured); the
    browser guards (Host, Origin); the API key; the bound on requests in progress; the body
    limits. No body is read before the key is checked (:mod:`~retrieval.serve.auth`).
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
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.service = service
    _install_error_handlers(app, service)

    # Starlette runs the middleware added last first: this reads from the innermost out.
    # Base64 inflates an image by 4/3; leave room for the JSON or multipart around it.
    image_bytes = config.max_upload_bytes * 4 // 3 + 64 * 1024
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: body_limit(path, image_bytes))
    app.add_middleware(RequestLimitMiddleware, limit=config.max_connections)
    app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
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
            allow_headers=["Content-Type", API_KEY_HEADER, RELOAD_KEY_HEADER],
        )
    app.add_middleware(SecurityHeadersMiddleware, cross_origin=bool(config.cors_origins))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            _page(),
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": PAGE_CSP,
                "X-Frame-Options": "DENY",
            },
        )

    @app.get(
        "/healthz", tags=["service"], summary="Liveness: the service answers and which collections it serves"
    )
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "collections": sorted(service.collections)}

    install_docs(app, config)
    app.include_router(api_router(service))
    app.include_router(clip_router(service))
    return app


def _version() -> str:
    from retrieval import __version__

    return __version__
