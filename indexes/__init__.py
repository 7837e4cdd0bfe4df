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
``store`` (raw vectors), ``exact`` (brute force), ``persist`` (manifest, fsync, writer lock).

Depends on numpy, faiss and the standard library only (never torch).
"""

from __future__ import annotations

from indexes.auto import choose_index
from indexes.collection import Collection, CollectionBusyError

__all__ = ["Collection", "CollectionBusyError", "choose_index"]
