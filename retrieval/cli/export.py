"""``retrieval export COLLECTION --query "..." --out DIR``: the items matching queries, copied with their
media and captions into a dataset (folder, Parquet or webdataset) that train / embed / eval read."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_collection, require_model
from retrieval.cli.options import MODEL_HELP, config_option, cosine_type, given
from retrieval.cli.parsing import UsageError
from retrieval.cli.queries import parse_where, read_queries
from retrieval.corpus.config import ExportConfig
from retrieval.corpus.writers import check_target


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="copy the items matching text queries (media, captions, metadata) into a dataset",
        description="Encode each query with the collection's model, keep its -k best items (or every item "
        "whose cosine reaches --threshold) within --where, and copy their images, captions and metadata "
        "into OUT as an image folder with metadata.jsonl, Parquet files or webdataset shards; "
        "`retrieval train`, `embed` and `eval` read the result. For exporting a model, see export-model.",
    )
    p.add_argument(
        "collection", help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://...)"
    )
    p.add_argument("--query", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    p.add_argument(
        "--query-file", default=None, metavar="FILE", help="text queries, one per line (- reads stdin)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the dataset into")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help=f"{MODEL_HELP}; default: the one `retrieval embed` recorded",
    )
    p.add_argument(
        "--where", action="append", default=[], metavar="FIELD=VALUE", help="metadata filter (repeatable)"
    )
    option = functools.partial(config_option, p, ExportConfig)
    option("format", "--format", help="layout of the dataset")
    option("k", "-k", metavar="N", help=f"best items per query (default: {ExportConfig.DEFAULT_K})")
    p.add_argument(
        "--threshold", dest="ExportConfig.threshold", default=argparse.SUPPRESS, metavar="T",
        type=cosine_type("--threshold"), help="every item whose cosine to a query is at least T (instead of -k)",
    )  # fmt: skip
    option(
        "modality", "--modality", choices=("images", "texts", "both"), metavar="{images,texts,both}",
        help="what the queries match (default: images when the collection holds any, else captions)",
    )  # fmt: skip
    option("max_k", "--max-k", help="with --threshold: items per query at most")
    option("shard_size", "--shard-size", help="records per webdataset shard or Parquet file")
    option("overwrite", "--overwrite", action="store_true", help="replace an existing, non-empty --out")
    option("device", "--device", help="torch device encoding the queries (none: cuda when available)")
    option("progress", "--no-progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import export_subset
    from retrieval.model import load_model

    options = given(args, ExportConfig)
    if "k" in options and "threshold" in options:
        raise UsageError("give either -k N or --threshold T, not both")
    config = ExportConfig().replace(**options)
    queries = list(args.query) + (
        read_queries(args.query_file, flag="--query-file") if args.query_file else []
    )
    if not queries:
        raise UsageError("give at least one --query TEXT or a --query-file")
    require_collection(args.collection)
    check_target(args.out, config.overwrite)
    name = args.model
    if name is None:
        from retrieval.embed import recorded_model

        name = recorded_model(args.collection)
        if name is None:
            raise ValueError(
                f"no model recorded for collection {args.collection}: name it with --model MODEL"
            )
        require_model(name, flag="the model `retrieval embed` recorded; name another with --model")
    else:
        require_model(name)
    model = load_model(name, device=config.device)
    result = export_subset(args.collection, queries, model, args.out, config, where=parse_where(args.where))
    print(result)
    return 0
