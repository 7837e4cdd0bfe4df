"""A scratch copy of a collection with the evaluated items it lacks, for measuring its index.

An evaluation with a collection asks how well the collection's index finds the evaluated items
among everything else it holds. When some evaluated images (or, for image-to-text, their captions)
are not in it, they are embedded anyway (as CLIP_benchmark embeds what it evaluates) and added to a
scratch copy: a local collection in a temporary folder with the same index spec, metric and
fingerprint, holding the collection's vectors (with only the ``modality`` and key fields) plus the
missing items. The scratch copy is built, measured and deleted; the collection is never written.

The copy costs what the exact measurement already costs (every candidate's vector is read) plus
building the index once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["COPY_BATCH", "scratch_copy"]

COPY_BATCH = 16_384  # vectors read from the collection at a time


@contextlib.contextmanager
def scratch_copy(
    collection: Any,
    extra_vectors: np.ndarray,
    extra_metadata: Sequence[dict[str, Any]],
    key_field: str,
) -> Iterator[Any]:
    """A saved local collection holding ``collection``'s items (``modality``, when it records one, and
    ``key_field`` metadata only) and ``extra_vectors [n, D]`` with ``extra_metadata``; deleted on exit."""
    from indexes import Collection

    ids = np.asarray(collection.ids(), dtype=np.int64)
    has_modality = "modality" in collection.fields()
    logger.info(
        "copying the %d items of %s into a scratch collection (%s) to add %d evaluated items it lacks",
        len(ids), collection.path, collection.index_spec, len(extra_vectors),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="retrieval-eval-") as tmp:
        path = Path(tmp) / "scratch"
        try:
            scratch = Collection.create(
                path, collection.dim, metric=collection.metric, index=collection.index_spec,
                fingerprint=collection.fingerprint or None, overwrite=True,
            )  # fmt: skip
        except ValueError:  # a spec only the collection's backend builds (e.g. on Milvus)
            scratch = Collection.create(
                path, collection.dim, metric=collection.metric, fingerprint=collection.fingerprint or None,
                overwrite=True,
            )  # fmt: skip
        with scratch:
            for start in range(0, len(ids), COPY_BATCH):
                chunk = ids[start : start + COPY_BATCH]
                metadata = []
                for meta in collection.get(chunk):
                    kept = {"modality": meta.get("modality", "image")} if has_modality else {}
                    if meta.get(key_field) is not None:
                        kept[key_field] = meta[key_field]
                    metadata.append(kept)
                scratch.add(np.asarray(collection.vectors(chunk), dtype=np.float32), metadata)
            if len(extra_vectors):
                scratch.add(np.asarray(extra_vectors, dtype=np.float32), list(extra_metadata))
            scratch.save()
            yield scratch
