"""``retrieval serve COLLECTION [NAME=COLLECTION ...]``: the HTTP API and search page."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import Any

from retrieval.cli.checks import require_collection, require_model
from retrieval.cli.options import config_option, given
from retrieval.config import ServeConfig

API_KEY_ENV = "RETRIEVAL_API_KEY"
RELOAD_KEY_ENV = "RETRIEVAL_RELOAD_KEY"


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


def _default_name(location: str) -> str:
    """A collection's default name: its folder's name, or the collection name of a Milvus location."""
    from indexes import parse_location

    loc = parse_location(location)
    return str(loc.name) if loc.name else Path(location.rstrip("/")).name


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~retrieval.config.ServeConfig` the command line describes (on top of ``--config``)."""
    base = ServeConfig.load(args.config) if args.config else ServeConfig()
    collections = dict(base.collections)
    for item in args.collections:
        name, sep, path = item.partition("=")
        if not sep or "://" in name:  # a location's own options (milvus://...?db=x) are no NAME=
            path = item
            name = args.name or _default_name(item)
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
        **given(args, ServeConfig),
        "collections": collections,
        "media_roots": media,
        "models": {**base.models, **_named(args.model_for, "--model-for")},
    }
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or base.api_key
    changes["api_key"] = api_key or None
    changes["reload_key"] = args.reload_key or os.environ.get(RELOAD_KEY_ENV) or base.reload_key or None
    if args.cors_origin:
        changes["cors_origins"] = [*base.cors_origins, *args.cors_origin]
    if args.hide_field:
        changes["hidden_fields"] = [*base.hidden_fields, *args.hide_field]
    if args.allowed_host:
        changes["allowed_hosts"] = [*base.allowed_hosts, *args.allowed_host]
    return base.replace(**changes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve collections over HTTP: JSON API, clip-retrieval compatible API and a search page",
        description="Serve one or more collections. Open http://HOST:PORT/ for the search page, /docs for the API.",
    )
    p.add_argument(
        "collections",
        nargs="*",
        metavar="COLLECTION",
        help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://PATH.db/NAME), "
        "or NAME=COLLECTION (repeatable)",
    )
    p.add_argument(
        "--name", default=None, help="name of a single collection (default: its folder or Milvus name)"
    )
    option = functools.partial(config_option, p, ServeConfig)
    option(
        "model",
        "--model",
        metavar="MODEL",
        help="model for every collection: folder or hub id org/name[@revision] (none: the one embed recorded)",
    )
    p.add_argument(
        "--model-for", action="append", default=[], metavar="NAME=MODEL", help="model of one collection"
    )
    p.add_argument(
        "--media-root",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="folder whose image files the page may show (only files inside it are served)",
    )
    option("host", "--host", help="interface to bind")
    option("port", "--port", help="port")
    p.add_argument("--api-key", default=None, help=f"require this X-API-Key header (default: ${API_KEY_ENV})")
    option("allow_insecure", "--insecure", action="store_true", help="allow a public bind without a key")
    option(
        "allow_image_urls",
        "--allow-image-urls",
        action="store_true",
        help="let clients search by an image URL",
    )
    option(
        "allow_private_urls", "--allow-private-urls", action="store_true",
        help="with --allow-image-urls: also private hosts",
    )  # fmt: skip
    option("max_upload_bytes", "--max-upload-bytes", help="largest accepted query image")
    option("max_k", "--max-k", help="most results per query")
    option("workers", "--workers", help="threads encoding queries")
    option("batch_size", "--batch-size", help="most queries encoded together")
    option("reload_interval", "--reload-interval", help="seconds between checks for changes on disk")
    p.add_argument(
        "--reload-key", default=None,
        help=f"allow POST .../reload to callers sending this X-Reload-Key header (default: ${RELOAD_KEY_ENV}; "
        "without one, reload is open on a keyless server and off on one with --api-key)",
    )  # fmt: skip
    option(
        "max_connections", "--max-connections",
        help="requests answered at once (more get 503; open sockets are bounded at 4x this)",
    )  # fmt: skip
    option(
        "max_connections_per_client", "--max-connections-per-client",
        help="connections one client address may hold open (0: no bound, e.g. behind a reverse proxy)",
    )  # fmt: skip
    option("header_timeout", "--header-timeout", help="seconds a client has to send its request headers")
    option("body_timeout", "--body-timeout", help="seconds a client has to send a request body")
    option(
        "show_paths", "--show-paths", action="store_true",
        help="return server file paths in metadata and errors (default: relative to the media root, or file names)",
    )  # fmt: skip
    p.add_argument(
        "--cors-origin", action="append", default=[], help="browser origin allowed to call the API"
    )
    p.add_argument(
        "--hide-field",
        action="append",
        default=[],
        help="metadata field never returned nor filterable (repeatable)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="host name browsers may reach the service by (repeatable; default on loopback: localhost, 127.0.0.1, ::1)",
    )
    option("device", "--device", help="torch device (none: cuda when available)")
    option("mmap", "--mmap", action="store_true", help="open collections memory-mapped")
    option("runtime", "--runtime", help="how the towers run: torch, onnx (ONNX Runtime), or auto")
    option(
        "hubness", "--hubness", choices=("isoftmax", "csls"),
        help="hubness correction of text/image queries with the query bank stored beside each collection",
    )  # fmt: skip
    option(
        "expand", "--expand", action="store_true",
        help="expand text->image and image->text queries through the pairs of the query bank beside each collection",
    )  # fmt: skip
    option("rerank", "--rerank", help="re-rank the dense top-N of text/image queries by the match head")
    p.add_argument("--config", default=None, help="ServeConfig JSON file (flags override it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.serve import run as serve

    config = build_config(args)
    for location in config.collections.values():
        require_collection(location)
    for model in {config.model, *config.models.values()} - {None}:
        require_model(model)
    serve(config)
    return 0
