"""Collections on Milvus (a server, a cluster, or a Milvus Lite file) behind the local collection's surface.

Open one through :func:`indexes.open_collection` / :func:`indexes.create_collection` with a
``milvus://HOST:PORT/NAME`` or ``milvus-lite://PATH.db/NAME`` location (see
:mod:`indexes.location`), or directly with :class:`MilvusCollection`.

Modules: ``collection`` (MilvusCollection: the facade), ``indexing`` (the index auto calls for,
rebuilds), ``tuning`` (search parameters, stored query sets), ``table`` (every request on the rows),
``client`` (the one door to pymilvus: connection, timeouts, errors), ``expr`` (``where`` filters as
Milvus expressions), ``kinds`` (index specs and search parameters), ``state`` (what the collection
records about itself), ``opening`` (checks of locations and schema), ``arrays`` (input checks,
result parsing). pymilvus is imported only when a connection is made.
"""

from __future__ import annotations

from indexes.milvus.client import MilvusUnavailableError
from indexes.milvus.collection import MilvusCollection

__all__ = ["MilvusCollection", "MilvusUnavailableError"]
