"""``retrieval search COLLECTION "a query"``: query a collection by text, image, or both; or by every
line of a file (``--queries FILE``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from retrieval.cli.checks import require_collection, require_file, require_model
from retrieval.cli.options import MODEL_HELP, config_default
from retrieval.cli.parsing import UsageError
from retrieval.cli.queries import parse_where, read_queries
from retrieval.cli.table import hits_table
from retrieval.config import RUNTIMES, ServeConfig


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
    p.add_argument(
        "--hubness", choices=("isoftmax", "csls"), default=None,
        help="hubness correction of the query, as `retrieval serve --hubness` scores it (needs a query bank)",
    )  # fmt: skip
    p.add_argument(
        "--query-bank", default=None, metavar="FILE",
        help="query bank (.querybank.npz) for --hubness / --expand (default: the one stored beside the collection)",
    )  # fmt: skip
    p.add_argument(
        "--expand", action="store_true",
        help="move a text query for images (an image query for captions) towards the partners of its nearest "
        "pairs in the query bank, as `retrieval serve --expand` does (needs a bank of pairs)",
    )  # fmt: skip
    p.add_argument("--rerank", type=int, default=0, metavar="N", help="re-rank the best N by the match head")
    p.add_argument(
        "--hybrid", default=None, metavar="FIELD[,FIELD]",
        help="also match the words of the query in these text fields (BM25; `all`: every indexed field), fused "
        "with the dense search; needs a text index (`retrieval text-index`, `embed --text-fields`)",
    )  # fmt: skip
    p.add_argument(
        "--fusion", choices=("rrf", "weighted", "lexical"), default="rrf",
        help="with --hybrid: reciprocal rank fusion, weighted normalised scores (--alpha), or the words alone",
    )  # fmt: skip
    p.add_argument("--rrf-k", type=int, default=60, metavar="K", help="with --fusion rrf: the rank constant")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="with --fusion weighted: weight of the dense search (0..1)"
    )
    p.add_argument(
        "--candidates", type=int, default=100, metavar="N", help="with --hybrid: hits of each arm fused"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per hit (with its query)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=config_default(ServeConfig, "runtime"),
        help="how the towers run: torch, onnx (ONNX Runtime), or auto (default: %(default)s)",
    )
    p.set_defaults(func=run)


def _hybrid(args: argparse.Namespace) -> Any:
    """The --hybrid options as a :class:`retrieval.search.Hybrid` (None without --hybrid)."""
    from retrieval.search import Hybrid

    hybrid_only = ("fusion", "rrf_k", "alpha", "candidates")
    if args.hybrid is None:
        defaults = {"fusion": "rrf", "rrf_k": 60, "alpha": 0.5, "candidates": 100}
        changed = [f"--{n.replace('_', '-')}" for n in hybrid_only if getattr(args, n) != defaults[n]]
        if changed:
            raise UsageError(f"{', '.join(changed)} only apply with --hybrid FIELD[,FIELD]")
        return None
    fields = [f.strip() for f in args.hybrid.split(",") if f.strip()]
    if not fields:
        raise UsageError(
            f"--hybrid expects text field names separated by commas (or all), received {args.hybrid!r}"
        )
    return Hybrid(
        fields=None if fields == ["all"] else tuple(fields),
        fusion=args.fusion,
        k=args.rrf_k,
        alpha=args.alpha,
        candidates=args.candidates,
    )


def run(args: argparse.Namespace) -> int:
    from retrieval.search import search_collection, search_texts

    if args.queries is not None and (args.query is not None or args.image is not None):
        raise UsageError("--queries FILE takes the text queries from the file: give no QUERY nor --image")
    require_collection(args.collection)
    if args.model is not None:
        require_model(args.model)
    elif args.hybrid is not None and args.fusion == "lexical":
        pass  # the words alone: no model
    else:
        from retrieval.embed import recorded_model

        recorded = recorded_model(args.collection)
        if recorded is not None:  # moved or deleted since: say so before anything loads
            require_model(recorded, flag="the model `retrieval embed` recorded; name another with --model")
    if args.hybrid is not None and args.image is not None:
        raise UsageError("--hybrid matches the words of a text query: give no --image")
    if args.image is not None and "://" not in args.image:
        require_file(args.image, "image", flag="--image")
    if args.query_bank is not None:
        require_file(args.query_bank, "query bank", flag="--query-bank")
    where = parse_where(args.where)
    hybrid = _hybrid(args)
    scoring = {
        "hubness": args.hubness,
        "query_bank": args.query_bank,
        "rerank": args.rerank,
        "hybrid": hybrid,
        "expansion": args.expand,
        "runtime": args.runtime,
    }
    if args.queries is not None:
        queries: list[dict[str, Any]] = [{"query": q} for q in read_queries(args.queries)]
        results = search_texts(
            args.collection,
            [q["query"] for q in queries],
            model_dir=args.model,
            k=args.k,
            where=where,
            modality=args.modality,
            **scoring,
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
            **scoring,
        )
        query = {"query": args.query} if args.query is not None else {}
        queries, results = [{**query, **({"image": args.image} if args.image else {})}], [hits]
    corrected = bool(
        args.hubness or args.rerank or hybrid
    )  # such scores are shown with the cosine beside them
    _print(queries, results, as_json=args.json, headers=args.queries is not None, cosine=corrected)
    return 0


def _print(
    queries: list[dict[str, Any]], results: list[list[Any]], *, as_json: bool, headers: bool, cosine: bool
) -> None:
    """JSON lines carrying their query, or a table per query (under a header line with ``headers``)."""
    for n, (query, hits) in enumerate(zip(queries, results), 1):
        if as_json:
            for rank, hit in enumerate(hits, 1):
                print(
                    json.dumps(
                        {
                            **query,
                            "rank": rank,
                            "id": hit.id,
                            "score": hit.score,
                            "cosine": hit.cosine,
                            **({"lexical": hit.lexical} if hit.lexical is not None else {}),
                            "metadata": hit.metadata,
                        }
                    )
                )
            continue
        if headers:
            if n > 1:
                print()
            print(f"query {n}/{len(queries)}: {query['query']}")
        print(hits_table(hits, width=_width(), cosine=cosine))


def _width() -> int | None:
    """Characters a table row may take: the terminal's width, or unlimited when not a terminal."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
