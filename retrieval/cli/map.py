"""``retrieval map COLLECTION --out map.html``: a 2-D map of a collection (HTML page and PNG)."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.checks import require_collection
from retrieval.cli.options import config_option, given
from retrieval.corpus.config import MapConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "map",
        help="draw a 2-D map of a collection: a self-contained HTML page (thumbnails on hover) and a PNG",
        description="Project a sample of the collection's vectors to 2-D (UMAP when umap-learn is installed, "
        "else PCA) and write a self-contained HTML page (no network needed: thumbnails on hover, colours "
        "by a metadata field, pan and zoom) and a PNG beside it.",
    )
    p.add_argument(
        "collection", help="collection folder or Milvus location (milvus://HOST:PORT/NAME, milvus-lite://...)"
    )
    p.add_argument("--out", required=True, metavar="HTML", help="the page to write (e.g. map.html)")
    p.add_argument("--png", default=None, metavar="PNG", help="the picture (default: --out with .png)")
    p.add_argument("--no-png", action="store_true", help="no PNG")
    option = functools.partial(config_option, p, MapConfig)
    option("sample", "--sample", metavar="N", help="items drawn at most (a seeded random sample)")
    option(
        "modality", "--modality", choices=("images", "texts", "both"), metavar="{images,texts,both}",
        help="what to draw (default: everything the collection holds)",
    )  # fmt: skip
    option(
        "color_by",
        "--color-by",
        metavar="FIELD",
        help="metadata field colouring the points (default: modality)",
    )
    option("method", "--method", help="projection: auto (UMAP when installed, else PCA), umap or pca")
    option("thumbnail_px", "--thumbnail-px", metavar="PX", help="side of the hover thumbnails")
    option(
        "thumbnail_bytes",
        "--thumbnail-bytes",
        metavar="BYTES",
        help="thumbnails embedded in the page at most",
    )
    option("max_categories", "--max-categories", metavar="N", help="colours of a categorical field")
    option("png_px", "--png-px", metavar="PX", help="width and height of the PNG")
    option("seed", "--seed", help="the sample and the projection")
    option("progress", "--no-progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import draw_map

    config = MapConfig().replace(**given(args, MapConfig))
    require_collection(args.collection)
    png = None if args.no_png else (args.png or True)
    print(draw_map(args.collection, args.out, config, png=png))
    return 0
