"""The API description and its pages, served offline from this server only.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts and styles from ``/docs/assets/``:
the files the pinned ``fastapi-offline`` package ships (part of the ``serve`` extra), and two small
start-up scripts of this package. No page loads anything from another site, and every page carries
a Content Security Policy allowing scripts from this origin only, with ``frame-ancestors 'none'``
(no other site can frame the pages, where the search page keeps the API key). (ReDoc's footer
names its maker with a logo from a CDN; the policy refuses that image, so it is not shown.)

The OpenAPI document (``/openapi.json``) declares the API key (``X-API-Key``) and the reload key
(``X-Reload-Key``) as security schemes when the server uses them, so the "Authorize" button of
Swagger UI sends them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from retrieval.config import ServeConfig
from retrieval.serve.auth import API_KEY_HEADER, RELOAD_KEY_HEADER, is_public
from retrieval.serve.errors import not_found

__all__ = ["DOCS_CSP", "install_docs"]

ASSETS_PACKAGE = "fastapi_offline"  # ships Swagger UI and ReDoc builds (pinned in the serve extra)
ASSET_PREFIX = "/docs/assets/"
# name -> (package, resource path, media type)
ASSETS = {
    "swagger-ui-bundle.js": (ASSETS_PACKAGE, "static/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (ASSETS_PACKAGE, "static/swagger-ui.css", "text/css"),
    "redoc.standalone.js": (ASSETS_PACKAGE, "static/redoc.standalone.js", "text/javascript"),
    "favicon.png": (ASSETS_PACKAGE, "static/favicon.png", "image/png"),
    "swagger-init.js": ("retrieval", "serve_static/swagger-init.js", "text/javascript"),
    "redoc-init.js": ("retrieval", "serve_static/redoc-init.js", "text/javascript"),
}

# Swagger UI and ReDoc style elements inline and ReDoc searches in a worker made from a blob.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

_SWAGGER = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="icon" href="docs/assets/favicon.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-spec="openapi.json"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/swagger-init.js"></script>
</body>
</html>
"""

_REDOC = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="docs/assets/favicon.png">
</head>
<body style="margin: 0">
<div id="redoc" data-spec="openapi.json"></div>
<script src="docs/assets/redoc.standalone.js"></script>
<script src="docs/assets/redoc-init.js"></script>
</body>
</html>
"""

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>API docs</title></head>
<body><p>The documentation pages need the <code>fastapi-offline</code> package, which ships their scripts
(<code>pip install "siamese-retrieval[serve]"</code>). The API description itself is at
<a href="openapi.json">openapi.json</a>.</p></body></html>
"""


def _asset(name: str) -> bytes | None:
    package, path, _ = ASSETS[name]
    try:
        return resources.files(package).joinpath(path).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _assets_present() -> bool:
    return all(_asset(n) is not None for n in ("swagger-ui-bundle.js", "redoc.standalone.js"))


def install_docs(app: FastAPI, config: ServeConfig) -> None:
    """Add ``/docs``, ``/redoc``, their assets and the OpenAPI document with its security schemes
    (create the app with ``docs_url=None, redoc_url=None``)."""
    title = app.title
    available = _assets_present()

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return HTMLResponse(_SWAGGER.format(title=title) if available else _MISSING, headers=PAGE_HEADERS)

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC.format(title=title) if available else _MISSING, headers=PAGE_HEADERS)

    @app.get(ASSET_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        content = _asset(name) if name in ASSETS else None
        if content is None:
            raise not_found("no_asset", f"no documentation asset named {name[:100]!r}")
        return Response(
            content,
            media_type=ASSETS[name][2],
            headers={"Cache-Control": "public, max-age=86400", "Content-Security-Policy": DOCS_CSP},
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_security(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                ),
                config,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_security(schema: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    """Declare the keys this server asks for, on the operations that need them."""
    schemes: dict[str, Any] = {}
    if config.api_key:
        schemes["ApiKey"] = {
            "type": "apiKey",
            "in": "header",
            "name": API_KEY_HEADER,
            "description": "the server's API key (`--api-key` / $RETRIEVAL_API_KEY)",
        }
    if config.reload_key:
        schemes["ReloadKey"] = {
            "type": "apiKey",
            "in": "header",
            "name": RELOAD_KEY_HEADER,
            "description": "the key that allows reloading collections (`--reload-key`)",
        }
    if not schemes:
        return schema
    schema.setdefault("components", {})["securitySchemes"] = schemes
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            needed = {} if is_public(path) else ({"ApiKey": []} if config.api_key else {})
            if path.endswith("/reload") and config.reload_key:
                needed["ReloadKey"] = []
            operation["security"] = [needed] if needed else []
    return schema
