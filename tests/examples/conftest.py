"""One torch thread per test (support.fixtures): tiny models run much faster that way on a shared CPU."""

from __future__ import annotations

from support.fixtures import one_torch_thread  # noqa: F401  (an autouse fixture for this folder)
