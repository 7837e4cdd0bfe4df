"""``retrieval text-index COLLECTION FIELD[,FIELD]``: declare (or change, or drop) a collection's text index."""

from __future__ import annotations

import argparse
import json

from retrieval.cli.checks import require_collection
from retrieval.cli.parsing import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "text-index",
        help="declare the metadata fields of a collection's text index (BM25, for `search --hybrid`)",
        description="Build the lexicon of the named metadata fields in every segment (from the metadata "
        "already stored) and commit; readers keep the version they opened. --drop removes the text index.",
    )
    p.add_argument(
        "collection",
        help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://PATH.db/NAME)",
    )
    p.add_argument(
        "fields", nargs="?", default=None, metavar="FIELD[,FIELD]", help="metadata fields to index"
    )
    p.add_argument(
        "--stemming", choices=("none", "porter"), default="none", help="read words by their English stems"
    )
    p.add_argument("--drop", action="store_true", help="remove the text index")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from indexes import open_collection

    if args.drop == (args.fields is not None):
        raise UsageError("name the fields to index (title,tags), or give --drop")
    require_collection(args.collection)
    fields = None if args.drop else [f.strip() for f in args.fields.split(",") if f.strip()]
    with open_collection(args.collection) as coll:
        coll.set_text_fields(fields, stemming=None if args.drop else args.stemming)
        print(json.dumps(coll.info().get("text_index"), indent=2))
    return 0
