"""``retrieval info COLLECTION``: what a collection holds."""

from __future__ import annotations

import argparse
import json

from retrieval.cli.checks import require_collection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="show a collection's manifest (count, dim, metric, index, model fingerprint)"
    )
    p.add_argument("collection", help="collection folder or Milvus location")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from indexes import open_collection

    require_collection(args.collection)
    with open_collection(args.collection, read_only=True) as coll:
        print(json.dumps(coll.info(), indent=2, sort_keys=True))
    return 0
