"""The options saying how a command reads its DATA, the same for every command that reads one
(every reader is :func:`retrieval.data.read_corpus`; ``embed`` and ``eval`` take them from their
config fields, the others from here).

``add_data_options(parser)`` adds ``--image-root``, ``--image-column``, ``--caption-column``,
``--id-column`` (and ``--split`` / ``--val-split`` when asked); ``read_options(args)`` returns the
ones given, keyed as :func:`~retrieval.data.read_corpus` (and ``TrainConfig``) name them.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_data_options", "read_options"]

# flag -> (metavar, help); the destination is the flag's name with underscores.
_OPTIONS = {
    "--split": (
        "SPLIT",
        "only DATA's rows of this split (comma-separated for several: train,restval), or DATA/<split>/",
    ),
    "--val-split": ("SPLIT", "only the --val data's rows of this split (e.g. val)"),
    "--image-root": ("DIR", "folder relative image paths start from (default: the manifest's)"),
    "--image-column": ("COLUMN", "column with the image: a path or image bytes (default: image)"),
    "--caption-column": ("COLUMN", "column with the caption(s) (default: caption)"),
    "--id-column": ("COLUMN", "column naming the image (default: its path)"),
}
_DEST = "data_options."


def add_data_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, split: bool = True, val_split: bool = False
) -> None:
    """Add the data-reading options to ``parser``; ``split`` / ``val_split`` add those two."""
    for flag, (metavar, help_text) in _OPTIONS.items():
        if (flag == "--split" and not split) or (flag == "--val-split" and not val_split):
            continue
        dest = _DEST + flag.lstrip("-").replace("-", "_")
        parser.add_argument(flag, dest=dest, default=None, metavar=metavar, help=help_text)


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data-reading options given on the command line, e.g. ``{"image_root": "imgs/"}``."""
    return {
        key[len(_DEST) :]: value
        for key, value in vars(args).items()
        if key.startswith(_DEST) and value is not None
    }
