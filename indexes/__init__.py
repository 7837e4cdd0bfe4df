"""Storage side of the toolkit: FAISS collections with SQLite metadata, usable on their own.

>>> import numpy as np, tempfile
>>> from indexes import Collection
>>> with tempfile.TemporaryDirectory() as tmp:
...     with Collection.create(tmp + "/c", dim=4, index="Flat") as coll:
...         ids = coll.add(np.eye(4, dtype=np.float32), [{"n": i} for i in range(4)])
...         scores, found = coll.search(np.eye(4)[:1], k=2, where={"n": {"gte": 0}})
...     print(found[0, 0], len(Collection.open(tmp + "/c", read_only=True)))
0 4

A collection is a directory: ``manifest.json`` (format version, dim, metric, count, index
spec, fingerprint, tuned parameters) naming one immutable data folder with the FAISS index,
the raw float32 vectors and the SQLite metadata. Saves are atomic; readers always see one
whole version. Scores are higher-is-better (inner product, or negated squared L2 distance);
missing results are id -1 / score -inf.

Modules: ``collection`` (the Collection), ``faiss_index`` (factory strings, training, params),
``auto`` (index choice and recall tuning), ``metadata`` (SQLite store and ``where`` filters),
``store`` (raw vectors), ``exact`` (brute force), ``persist`` (manifest, fsync, writer lock),
``limits`` (every size at which the code changes path, :class:`Limits`).

A collection may also live in Milvus (a server, a cluster or a Milvus Lite file):
``open_collection`` / ``create_collection`` take a folder, ``milvus://HOST:PORT/NAME`` or
``milvus-lite://PATH.db/NAME`` and return an object with the same surface; ``copy_collection``
copies between any two locations keeping ids and metadata. Modules: ``location`` (location
strings), ``backends`` (open / create anywhere), ``copy``, ``milvus`` (the Milvus collection).

Depends on numpy, faiss and the standard library only (never torch); pymilvus (the
``distributed`` extra) is imported only when a Milvus location is used.
"""

from __future__ import annotations

from typing import Any

from indexes.auto import choose_index
from indexes.backends import VectorCollection, collection_exists, create_collection, open_collection
from indexes.collection import Collection, CollectionBusyError
from indexes.copy import CopyReport, copy_collection
from indexes.limits import Limits
from indexes.location import Location, parse_location

__all__ = [
    "Collection",
    "CollectionBusyError",
    "CopyReport",
    "Limits",
    "Location",
    "MilvusCollection",
    "VectorCollection",
    "choose_index",
    "collection_exists",
    "copy_collection",
    "create_collection",
    "open_collection",
    "parse_location",
]


def __getattr__(name: str) -> Any:
    """``indexes.MilvusCollection`` without importing the Milvus modules until it is asked for."""
    if name == "MilvusCollection":
        from indexes.milvus import MilvusCollection

        return MilvusCollection
    raise AttributeError(f"module 'indexes' has no attribute {name!r}")
