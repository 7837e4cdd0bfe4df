"""``retrieval serve COLLECTION [NAME=COLLECTION ...]``: the HTTP API and search page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

API_KEY_ENV = "RETRIEVAL_API_KEY"


def _named(values: list[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` strings -> a dict (names must be unique)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{what} expects NAME=PATH, received {value!r}")
        if name in out:
            raise ValueError(f"{what}: name {name!r} given twice")
        out[name] = rest
    return out


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~retrieval.config.ServeConfig` the command line describes (on top of ``--config``)."""
    from retrieval.config import ServeConfig

    base = ServeConfig.load(args.config) if args.config else ServeConfig()
    collections = dict(base.collections)
    for item in args.collections:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            name = args.name or Path(item.rstrip("/")).name
        elif not name or not path:
            raise ValueError(f"expected COLLECTION or NAME=COLLECTION, received {item!r}")
        if name in collections:
            raise ValueError(f"collection name {name!r} given twice: name them with NAME=PATH")
        collections[name] = path
    if not collections:
        raise ValueError("give at least one collection folder (or a --config file listing them)")
    if args.name and len(args.collections) != 1:
        raise ValueError("--name applies to a single collection; name several with NAME=PATH")

    media = dict(base.media_roots)
    for value in args.media_root:
        if "=" in value and value.split("=", 1)[0] in collections:
            media.update(_named([value], "--media-root"))
        elif len(collections) == 1:
            media[next(iter(collections))] = value
        else:
            raise ValueError("with several collections, give --media-root as NAME=DIR")

    changes: dict[str, Any] = {
        "collections": collections,
        "media_roots": media,
        "models": {**base.models, **_named(args.model_for, "--model-for")},
    }
    for field in (
        "model",
        "host",
        "port",
        "max_k",
        "workers",
        "batch_size",
        "reload_interval",
        "device",
        "max_upload_bytes",
    ):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or base.api_key
    changes["api_key"] = api_key or None
    for flag in ("allow_image_urls", "allow_private_urls", "allow_insecure", "mmap"):
        if getattr(args, flag):
            changes[flag] = True
    if args.cors_origin:
        changes["cors_origins"] = [*base.cors_origins, *args.cors_origin]
    if args.hide_field:
        changes["hidden_fields"] = [*base.hidden_fields, *args.hide_field]
    return base.replace(**changes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve collections over HTTP: JSON API, clip-retrieval compatible API and a search page",
        description="Serve one or more collections. Open http://HOST:PORT/ for the search page, /docs for the API.",
    )
    p.add_argument(
        "collections", nargs="*", metavar="COLLECTION", help="collection folder, or NAME=FOLDER (repeatable)"
    )
    p.add_argument("--name", default=None, help="name of a single collection (default: its folder name)")
    p.add_argument(
        "--model", default=None, help="model folder for every collection (default: the one embed recorded)"
    )
    p.add_argument(
        "--model-for", action="append", default=[], metavar="NAME=DIR", help="model folder of one collection"
    )
    p.add_argument(
        "--media-root",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="folder whose image files the page may show (only files inside it are served)",
    )
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help=f"require this X-API-Key header (default: ${API_KEY_ENV})")
    p.add_argument(
        "--insecure", dest="allow_insecure", action="store_true", help="allow a public bind without a key"
    )
    p.add_argument("--allow-image-urls", action="store_true", help="let clients search by an image URL")
    p.add_argument(
        "--allow-private-urls", action="store_true", help="with --allow-image-urls: also private hosts"
    )
    p.add_argument("--max-upload-bytes", type=int, default=None, help="largest accepted query image")
    p.add_argument("--max-k", type=int, default=None, help="most results per query (default 100)")
    p.add_argument("--workers", type=int, default=None, help="threads encoding queries (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="most queries encoded together (default 32)")
    p.add_argument(
        "--reload-interval", type=float, default=None, help="seconds between checks for changes on disk"
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], help="browser origin allowed to call the API"
    )
    p.add_argument(
        "--hide-field", action="append", default=[], help="metadata field never returned (repeatable)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--mmap", action="store_true", help="open collections memory-mapped")
    p.add_argument("--config", default=None, help="ServeConfig JSON file (flags override it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.serve import run as serve

    serve(build_config(args))
    return 0
