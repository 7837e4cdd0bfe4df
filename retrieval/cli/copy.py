"""``retrieval copy SRC DST``: copy a collection between a local folder and Milvus, keeping ids and metadata."""

from __future__ import annotations

import argparse

from retrieval.cli.checks import require_collection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "copy",
        help="copy a collection to another location (folder <-> milvus://, milvus-lite://), ids and metadata kept",
        description="Copy every item of SRC into DST (created when missing), keeping ids, vectors, metadata "
        "and the model fingerprint. Safe to re-run: a copy that stopped half-way is finished by running "
        "the same command again.",
    )
    p.add_argument("source", metavar="SRC", help="collection folder or Milvus location to read")
    p.add_argument("destination", metavar="DST", help="collection folder or Milvus location to write")
    p.add_argument(
        "--index",
        default=None,
        help="index of the destination (default: the source's, when the destination can build it, else auto)",
    )
    p.add_argument("--batch", type=int, default=10_000, help="items read and written at a time")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking a local source's checksums first",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from indexes import copy_collection

    require_collection(args.source, flag="SRC")
    report = copy_collection(
        args.source,
        args.destination,
        batch=args.batch,
        index=args.index,
        overwrite=args.overwrite,
        verify=args.verify,
    )
    print(
        f"copied {report.copied} of {report.total} items ({report.already_there} already there) "
        f"from {report.source} to {report.destination} in {report.seconds:.1f}s"
    )
    return 0
