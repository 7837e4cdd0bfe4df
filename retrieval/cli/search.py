"""``retrieval search COLLECTION "a query"``: query a collection by text, image, or both."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retrieval.cli.options import MODEL_HELP, config_default
from retrieval.config import RUNTIMES, ServeConfig


def _where(pairs: list[str]) -> dict[str, Any] | None:
    """``field=value`` strings -> a where filter; a repeated field means "any of"; numbers are parsed."""
    where: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep or not field:
            raise ValueError(f"--where expects field=value, received {pair!r}")
        value: Any = raw
        try:
            value = json.loads(raw)
            if not isinstance(value, (int, float, bool)):
                value = raw
        except ValueError:
            pass
        if field in where:
            previous = where[field]
            where[field] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            where[field] = value
    return where or None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search a collection by text and/or image; prints a table or JSON lines"
    )
    p.add_argument(
        "collection",
        help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://PATH.db/NAME)",
    )
    p.add_argument(
        "query", nargs="?", default=None, help="text query (with --image: the text of a composed query)"
    )
    p.add_argument("--image", default=None, help="image query path (with a text query: composed query)")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help=f"{MODEL_HELP}; default: the one `retrieval embed` recorded",
    )
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument(
        "--where", action="append", default=[], metavar="FIELD=VALUE", help="metadata filter (repeatable)"
    )
    p.add_argument(
        "--modality", choices=("image", "text"), default="image", help="what to return (default image)"
    )
    p.add_argument("--text-weight", type=float, default=0.5, help="weight of the text in a composed query")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=config_default(ServeConfig, "runtime"),
        help="how the towers run: torch, onnx (ONNX Runtime), or auto (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.search import search_collection

    hits = search_collection(
        args.collection,
        args.query,
        image=args.image,
        model_dir=args.model,
        k=args.k,
        where=_where(args.where),
        text_weight=args.text_weight,
        modality=args.modality,
        runtime=args.runtime,
    )
    if args.json:
        for rank, hit in enumerate(hits, 1):
            print(json.dumps({"rank": rank, "id": hit.id, "score": hit.score, "metadata": hit.metadata}))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'id':>6}  {'modality':<8}  item")
    for rank, hit in enumerate(hits, 1):
        meta = hit.metadata
        item = meta.get("path") if meta.get("modality") == "image" else meta.get("caption")
        print(f"{rank:>4}  {hit.score:>7.4f}  {hit.id:>6}  {meta.get('modality', ''):<8}  {item}")
    if not hits:
        print("(no results)")
    return 0
