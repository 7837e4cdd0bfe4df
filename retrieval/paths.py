"""Where generated data, models and caches go by default (never the source tree)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The toolkit's cache folder: ``$RETRIEVAL_CACHE``, else ``$XDG_CACHE_HOME/siamese-retrieval``,
    else ``~/.cache/siamese-retrieval``; ``parts`` name a subfolder. Created on demand."""
    root = os.environ.get("RETRIEVAL_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "siamese-retrieval"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
