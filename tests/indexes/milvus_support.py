"""The Milvus test helpers, under the name the indexes tests import them by (they live in support.milvus)."""

from __future__ import annotations

from support.milvus import MilvusTestServer, backends, free_port, location_factory, unique_name

__all__ = ["MilvusTestServer", "backends", "free_port", "location_factory", "unique_name"]
