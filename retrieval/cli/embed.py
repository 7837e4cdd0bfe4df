"""``retrieval embed SOURCE --model DIR --out COLLECTION``: embed a corpus into a collection."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed a corpus (manifest, image folder, webdataset shards) into a collection; resumable",
        description="Embed images and/or captions into a collection. Interrupted runs resume where they "
        "stopped; re-running after adding files embeds only the new ones.",
    )
    p.add_argument(
        "source", help="manifest (.jsonl/.csv/.tsv/.parquet), image folder with sidecars, or .tar shard(s)"
    )
    p.add_argument("--model", required=True, help="model folder (TwinEncoder.save layout)")
    p.add_argument("--out", required=True, help="collection folder to create or extend")
    p.add_argument("--modality", choices=("images", "texts", "both"), default="both", help="what to embed")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local DataLoader or Ray Data")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image decoding worker processes")
    p.add_argument("--shard-size", type=int, default=4096, help="vectors per committed shard")
    p.add_argument(
        "--index", default="auto", help="index of a new collection: auto or a FAISS factory string"
    )
    p.add_argument(
        "--npy-export", default=None, metavar="DIR", help="also write clip-retrieval .npy + parquet here"
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster address (engine ray)")
    p.add_argument("--num-actors", type=int, default=2, help="encoder actors (engine ray)")
    p.add_argument("--image-column", default="image", help="manifest column with the image path")
    p.add_argument("--caption-column", default="caption", help="manifest column with the caption(s)")
    p.add_argument("--id-column", default=None, help="manifest column with the image id (default: the path)")
    p.add_argument("--split", default=None, help="only rows of this split")
    p.add_argument(
        "--prune", action="store_true", help="remove items no longer in the corpus from the collection"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.config import EmbedConfig
    from retrieval.embed import embed_corpus
    from retrieval.model import TwinEncoder

    config = EmbedConfig(
        modality=args.modality,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        shard_size=args.shard_size,
        engine=args.engine,
        ray_address=args.ray_address,
        num_actors=args.num_actors,
        npy_export=args.npy_export,
        index=args.index,
        progress=not args.no_progress,
        image_column=args.image_column,
        caption_column=args.caption_column,
        id_column=args.id_column,
        split=args.split,
        prune=args.prune,
    )
    model = TwinEncoder.load(args.model, device=args.device)
    summary = embed_corpus(model, args.source, args.out, config, model_dir=args.model)
    print(summary)
    return 0
