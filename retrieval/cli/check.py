"""``retrieval check COLLECTION [--repair]``: verify every file of a collection, optionally repair it.

Safe beside a writer in another process: the check reports on one version that stayed current
while it was read (it follows the writer's commits), and a repair commits on top of the newest
version under the writer lock (nothing is repaired while another process holds it).

Exit status: 0 no damage (or all of it repaired without loss), 1 damage found and not repaired,
3 repaired but some items were lost (listed), 4 not checked: writers kept committing throughout.
"""

from __future__ import annotations

import argparse
import json

from retrieval.cli.checks import require_collection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify every checksum and the agreement of ids, vectors, metadata and index (exit 1 when damaged)",
    )
    p.add_argument("collection", help="collection directory")
    p.add_argument(
        "--repair", action="store_true", help="rebuild what intact parts allow, and say what was lost"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from indexes import CollectionBusyError
    from indexes.verify import verify_path

    require_collection(args.collection, manifest=False)
    try:
        report = verify_path(args.collection, repair=args.repair)
    except CollectionBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    if report.ok:
        return 0
    if report.repaired:
        return 3 if report.lost_ids else 0
    return 1
