"""``retrieval search COLLECTION "a query"``: query a collection by text, image, or both; or by every
line of a file (``--queries FILE``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from retrieval.cli.checks import require_collection, require_file, require_model
from retrieval.cli.options import MODEL_HELP
from retrieval.cli.parsing import UsageError
from retrieval.cli.queries import parse_where, read_queries
from retrieval.cli.table import hits_table


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
        "--queries",
        default=None,
        metavar="FILE",
        help="text queries, one per line (- reads stdin); the results are grouped per query",
    )
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
        "--modality",
        choices=("image", "text"),
        default=None,
        help="what to return (default: what the collection holds; image when it holds both)",
    )
    p.add_argument("--text-weight", type=float, default=0.5, help="weight of the text in a composed query")
    p.add_argument("--json", action="store_true", help="one JSON object per hit (with its query)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.search import search_collection, search_texts

    if args.queries is not None and (args.query is not None or args.image is not None):
        raise UsageError("--queries FILE takes the text queries from the file: give no QUERY nor --image")
    require_collection(args.collection)
    if args.model is not None:
        require_model(args.model)
    else:
        from retrieval.embed import recorded_model

        recorded = recorded_model(args.collection)
        if recorded is not None:  # moved or deleted since: say so before anything loads
            require_model(recorded, flag="the model `retrieval embed` recorded; name another with --model")
    if args.image is not None and "://" not in args.image:
        require_file(args.image, "image", flag="--image")
    where = parse_where(args.where)
    if args.queries is not None:
        queries: list[dict[str, Any]] = [{"query": q} for q in read_queries(args.queries)]
        results = search_texts(
            args.collection,
            [q["query"] for q in queries],
            model_dir=args.model,
            k=args.k,
            where=where,
            modality=args.modality,
        )
    else:
        hits = search_collection(
            args.collection,
            args.query,
            image=args.image,
            model_dir=args.model,
            k=args.k,
            where=where,
            text_weight=args.text_weight,
            modality=args.modality,
        )
        query = {"query": args.query} if args.query is not None else {}
        queries, results = [{**query, **({"image": args.image} if args.image else {})}], [hits]
    _print(queries, results, as_json=args.json, headers=args.queries is not None)
    return 0


def _print(queries: list[dict[str, Any]], results: list[list[Any]], *, as_json: bool, headers: bool) -> None:
    """JSON lines carrying their query, or a table per query (under a header line with ``headers``)."""
    for n, (query, hits) in enumerate(zip(queries, results), 1):
        if as_json:
            for rank, hit in enumerate(hits, 1):
                print(
                    json.dumps(
                        {**query, "rank": rank, "id": hit.id, "score": hit.score, "metadata": hit.metadata}
                    )
                )
            continue
        if headers:
            if n > 1:
                print()
            print(f"query {n}/{len(queries)}: {query['query']}")
        print(hits_table(hits, width=_width()))


def _width() -> int | None:
    """Characters a table row may take: the terminal's width, or unlimited when not a terminal."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
