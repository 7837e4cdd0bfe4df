"""``retrieval embed SOURCE --model MODEL --out COLLECTION``: embed a corpus into a collection."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_input, require_model
from retrieval.cli.options import MODEL_HELP, config_option, given
from retrieval.config import EmbedConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed a corpus (manifest, image folder, webdataset shards) into a collection; resumable",
        description="Embed images and/or captions into a collection. Interrupted runs resume where they "
        "stopped; re-running after adding files embeds only the new ones.",
    )
    p.add_argument(
        "source",
        help="image folder (captions optional), manifest or table (.jsonl/.json/.csv/.tsv/.parquet/.arrow), "
        "caption list (.txt), Karpathy or COCO captions JSON, .tar shard(s) or a pattern, datasets folder",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="collection to create or extend: a folder, milvus://HOST:PORT/NAME or milvus-lite://PATH.db/NAME",
    )
    option = functools.partial(config_option, p, EmbedConfig)
    option("modality", "--modality", help="what to embed")
    option("engine", "--engine", help="local (this process) or ray (Ray Data actor pool)")
    option("device", "--device", help="torch device (none: cuda when available)")
    option("batch_size", "--batch-size", help="items per forward pass")
    option("num_workers", "--workers", help="image decoding worker processes")
    option("shard_size", "--shard-size", help="vectors per committed shard")
    option("index", "--index", help="index of a new collection: auto or a FAISS factory string")
    option(
        "npy_export",
        "--npy-export",
        metavar="DIR",
        help="also write clip-retrieval .npy + parquet into this folder",
    )
    option("ray_address", "--ray-address", help="Ray cluster address (engine ray)")
    option("num_actors", "--num-actors", help="encoder actors (engine ray)")
    option("image_column", "--image-column", help="manifest column with the image path")
    option("caption_column", "--caption-column", help="manifest column with the caption(s)")
    option("id_column", "--id-column", help="manifest column with the image id (none: the path)")
    option(
        "split", "--split", help="only rows of this split (comma-separated for several), or SOURCE/<split>/"
    )
    option(
        "image_root",
        "--image-root",
        metavar="DIR",
        help="folder relative image paths start from (default: the manifest's)",
    )
    option("prune", "--prune", action="store_true", help="remove items no longer in the corpus")
    option(
        "state",
        "--state",
        metavar="DIR",
        help="folder keeping the record of what is done (default: COLLECTION/embed for a folder, the "
        "toolkit cache for a Milvus location)",
    )
    option("runtime", "--runtime", help="how the towers run: torch, onnx (ONNX Runtime), or auto")
    option(
        "feature_cache",
        "--no-feature-cache",
        action="store_false",
        help="neither read nor add image tower features in the feature cache",
    )
    option(
        "text_fields",
        "--text-fields",
        type=_field_list,
        metavar="FIELD[,FIELD]",
        help="metadata fields of the collection's text index (BM25 for `retrieval search --hybrid`)",
    )
    option("text_stemming", "--text-stemming", help="read the indexed words by their English stems (porter)")
    option("progress", "--no-progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _field_list(value: str) -> tuple[str, ...]:
    """``title,tags`` -> ("title", "tags")."""
    fields = tuple(f.strip() for f in value.split(",") if f.strip())
    if not fields:
        raise argparse.ArgumentTypeError(f"expected field names separated by commas, received {value!r}")
    return fields


def run(args: argparse.Namespace) -> int:
    from retrieval.embed import embed_corpus
    from retrieval.model import load_model

    config = EmbedConfig().replace(**given(args, EmbedConfig))
    require_input(args.source, "corpus", flag="SOURCE")
    require_model(args.model)
    model = load_model(args.model, device=config.device, runtime=config.runtime)
    summary = embed_corpus(model, args.source, args.out, config)
    print(summary)
    return 0
