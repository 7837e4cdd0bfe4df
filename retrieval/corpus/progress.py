"""A progress bar for the corpus tools: tqdm on a terminal when asked, nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "item") -> Any:
    """A ``tqdm`` bar (``update(n)``, ``close()``, a context manager), silent unless ``enabled`` and
    stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
        disable=not (enabled and sys.stderr.isatty()),
    )  # fmt: skip
