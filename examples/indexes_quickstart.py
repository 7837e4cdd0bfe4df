"""The indexes package on its own: build, filter, update, persist and reopen a collection.

    python examples/indexes_quickstart.py [--dir /some/folder]

Uses random unit vectors (any embedding model's output works the same way) and prints the
collection's info, a filtered search and the effect of removing items. Expected output: the
top hit of each query is the item the query was made from, every filtered hit carries
``"colour": "red"``, and the reopened collection reports the same count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from indexes import Collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the collection (default: a temp dir)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5_000, 64)).astype(np.float32)  # [n, d]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # unit vectors: inner product = cosine
    colours = ["red", "green", "blue"]
    metadata = [
        {"colour": colours[i % 3], "year": 2000 + i % 25, "name": f"item-{i}"} for i in range(len(vectors))
    ]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "demo-collection"
        with Collection.create(path, dim=64, index="auto", fingerprint="random-vectors-v1") as coll:
            ids = coll.add(vectors, metadata)  # saved when the block ends

        with Collection.open(path) as coll:
            queries = vectors[:3] + 0.05 * rng.standard_normal((3, 64)).astype(np.float32)
            scores, found = coll.search(queries, k=5)  # [3, 5] each; higher score = closer
            print(
                "top hit per query:",
                found[:, 0].tolist(),
                "(expected [0, 1, 2]), scores",
                scores[:, 0].round(3),
            )
            _, found = coll.search(queries, k=5, where={"colour": "red", "year": {"gte": 2010}})
            hits = coll.get(found[0][found[0] >= 0])
            print("filtered hits:", [(h["name"], h["colour"], h["year"]) for h in hits])
            coll.remove(ids[:100])
            print("after removing 100:", len(coll), "items")
        with Collection.open(path, read_only=True) as coll:
            print(
                json.dumps(
                    {k: coll.info()[k] for k in ("count", "dim", "metric", "index_spec", "fingerprint")}
                )
            )


if __name__ == "__main__":
    main()
