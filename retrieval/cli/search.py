"""``retrieval search COLLECTION "a query"``: query a collection by text, image, or both."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retrieval.cli.options import MODEL_HELP


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
    p.add_argument(
        "--hubness", choices=("isoftmax", "csls"), default=None,
        help="hubness correction of the query, as `retrieval serve --hubness` scores it (needs a query bank)",
    )  # fmt: skip
    p.add_argument(
        "--query-bank", default=None, metavar="FILE",
        help="query bank (.querybank.npz) for --hubness (default: the one stored beside the collection)",
    )  # fmt: skip
    p.add_argument("--rerank", type=int, default=0, metavar="N", help="re-rank the best N by the match head")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
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
        hubness=args.hubness,
        query_bank=args.query_bank,
        rerank=args.rerank,
    )
    if args.json:
        for rank, hit in enumerate(hits, 1):
            out = {
                "rank": rank,
                "id": hit.id,
                "score": hit.score,
                "cosine": hit.cosine,
                "metadata": hit.metadata,
            }
            print(json.dumps(out))
        return 0
    # corrected scores are shown with the cosine beside them
    corrected = bool(args.hubness or args.rerank)
    cosine = f"  {'cosine':>7}" if corrected else ""
    print(f"{'rank':>4}  {'score':>7}{cosine}  {'id':>6}  {'modality':<8}  item")
    for rank, hit in enumerate(hits, 1):
        meta = hit.metadata
        item = meta.get("path") if meta.get("modality") == "image" else meta.get("caption")
        cosine = f"  {hit.cosine:>7.4f}" if corrected else ""
        print(f"{rank:>4}  {hit.score:>7.4f}{cosine}  {hit.id:>6}  {meta.get('modality', ''):<8}  {item}")
    if not hits:
        print("(no results)")
    return 0
