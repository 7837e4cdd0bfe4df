"""``retrieval index SHARDS --out COLLECTION``: build a collection from embedding shards (.npy)."""

from __future__ import annotations

import argparse
import json

from retrieval.cli.checks import require_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build a collection from .npy embedding shards (clip-retrieval layout: img_emb/, text_emb/, metadata/)",
        description=(
            "Build a collection from embedding shards: the clip-retrieval layout that `retrieval embed "
            "--npy-export` writes (img_emb/*.npy, text_emb/*.npy, metadata/*.parquet), a folder of .npy files "
            "(each with an optional same-name .parquet or .jsonl), or one .npy file. The index is trained once "
            "on a sample and every shard is added in parallel; an interrupted build resumes."
        ),
    )
    p.add_argument("shards", help="folder (or .npy file) holding the embedding shards")
    p.add_argument("--out", required=True, help="collection directory to create")
    p.add_argument("--index", default="auto", help="FAISS factory string or 'auto' (default: auto)")
    p.add_argument("--metric", default="ip", choices=["ip", "l2"], help="ip (cosine on unit vectors) or l2")
    p.add_argument(
        "--memory-budget", default=None, help="bytes or e.g. 4GB: bounds the index and the segments"
    )
    p.add_argument(
        "--recall-target", type=float, default=0.95, help="recall@10 the search parameters are tuned to"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (or Ray tasks at a time)")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local processes or Ray tasks")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--fingerprint", default=None, help="fingerprint of the model that made the embeddings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection at --out")
    p.add_argument(
        "--text-fields", default=None, metavar="FIELD[,FIELD]",
        help="metadata fields of a text index (BM25, for `retrieval search --hybrid`)",
    )  # fmt: skip
    p.add_argument(
        "--text-stemming",
        choices=("none", "porter"),
        default="none",
        help="with --text-fields: English stems",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from indexes.build import build_collection

    require_input(args.shards, "embedding shards", flag="SHARDS")
    summary = build_collection(
        args.shards,
        args.out,
        index=args.index,
        metric=args.metric,
        fingerprint=args.fingerprint,
        memory_budget=args.memory_budget,
        recall_target=args.recall_target,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        overwrite=args.overwrite,
        text_fields=[f.strip() for f in args.text_fields.split(",") if f.strip()]
        if args.text_fields
        else None,
        stemming=args.text_stemming if args.text_fields else None,
    )
    print(json.dumps(summary.__dict__, indent=2, sort_keys=True))
    return 0
