"""``retrieval compact COLLECTION``: merge small segments and drop removed rows now."""

from __future__ import annotations

import argparse
import json

from retrieval.cli.checks import require_collection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact", help="merge a collection's segments as its policy asks (--all: into as few as possible)"
    )
    p.add_argument("collection", help="collection directory")
    p.add_argument("--all", action="store_true", help="merge everything and drop every removed row")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from indexes import Collection

    require_collection(args.collection)
    with Collection.open(args.collection) as coll:
        merged = coll.compact(force=args.all)
        print(json.dumps({"new_segments": merged, "segments": coll.segments}, indent=2))
    return 0
