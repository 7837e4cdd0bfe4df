"""``retrieval dedup COLLECTION --threshold T``: groups of near-duplicates, written out, removed or estimated."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from retrieval.cli.checks import require_collection
from retrieval.cli.options import config_option, cosine_type, given
from retrieval.corpus.config import DedupConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dedup",
        help="find near-duplicate images or captions in a collection; write the groups, remove or estimate them",
        description="Find groups of items whose cosine is at least --threshold (k-NN through the collection's "
        "index, every pair re-checked exactly), write them to OUT/groups.jsonl and OUT/groups.parquet, and "
        "with --remove keep one item per group. --sample N only estimates the duplicate rate.",
    )
    p.add_argument(
        "collection", help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://...)"
    )
    option = functools.partial(config_option, p, DedupConfig)
    p.add_argument(
        "--threshold", dest="DedupConfig.threshold", required=True, metavar="T",
        type=cosine_type("--threshold", positive=True),
        help="cosine at or above which two items are near-duplicates (depends on the model: try --sample first)",
    )  # fmt: skip
    option(
        "modality", "--modality", choices=("images", "texts", "both"), metavar="{images,texts,both}",
        help="what to deduplicate (default: images when the collection holds any, else captions)",
    )  # fmt: skip
    option("policy", "--policy", help="connected components of the pairs, or keep-the-first (greedy)")
    option(
        "keep", "--keep", metavar="first|largest|FIELD",
        help="which member of a group stays: the first added, the largest (pixels; characters for captions), "
        "or the highest value of a metadata field",
    )  # fmt: skip
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for groups.jsonl, groups.parquet and summary.json (default: COLLECTION-dedup beside it)",
    )
    p.add_argument(
        "--remove", action="store_true", help="remove all but the kept item of each group from the collection"
    )
    option("sample", "--sample", metavar="N", help="only estimate the duplicate rate from N random items")
    option("exact", "--exact", action="store_true", help="brute force over every vector instead of the index")
    option("k", "-k", metavar="K", help="neighbours asked per item at first (doubled while all are above T)")
    option("max_k", "--max-k", help="neighbours per item at most")
    option("batch_size", "--batch-size", help="items searched per call")
    option("refine", "--refine", help="exact re-scoring factor of the index search")
    option("seed", "--seed", help="which items --sample draws")
    option("progress", "--no-progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def default_out(collection: str) -> Path:
    """``COLLECTION-dedup`` beside a local collection; the toolkit cache for a Milvus one."""
    from indexes import parse_location

    location = parse_location(collection)
    if location.is_milvus:
        from retrieval.paths import cache_dir

        return cache_dir("dedup") / str(location.name)
    path = Path(str(location.path)).expanduser()
    return path.parent / f"{path.name}-dedup"


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import find_duplicates

    config = DedupConfig().replace(**given(args, DedupConfig))
    require_collection(args.collection)
    out = None if config.sample else (args.out or default_out(args.collection))
    result = find_duplicates(args.collection, config, out=out, remove=args.remove)
    print(result)
    return 0
