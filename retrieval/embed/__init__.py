"""Embed a corpus into an :class:`indexes.Collection`: streamed, batched, resumable.

``embed_corpus(model, source, collection_path, config)`` reads the corpus with the data
layer, skips every item already done, encodes the rest batch by batch (in this process,
or on a Ray Data actor pool) and commits the vectors in shards to a state folder (inside a
local collection; in the toolkit cache, or ``EmbedConfig.state``, for a Milvus location);
the collection is then extended from the new shards. Killed at any point,
the same call finishes the job; called on a finished job it does nothing.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.embed.job` -- :func:`embed_corpus`: the job from corpus to collection.
* :mod:`~retrieval.embed.items` -- the items of a corpus and their identity keys.
* :mod:`~retrieval.embed.engines` -- local and Ray engines turning items into vector batches
  (both encode through :mod:`retrieval.encoding`).
* :mod:`~retrieval.embed.store` -- committed shards, the record of what is done, the collection
  built from them.
"""

from __future__ import annotations

from retrieval.config import EmbedConfig
from retrieval.embed.job import (
    EmbedSummary,
    NothingEmbeddedError,
    embed_corpus,
    recorded_model,
    recorded_model_dir,
)
from retrieval.embed.store import state_dir

__all__ = [
    "EmbedConfig",
    "EmbedSummary",
    "NothingEmbeddedError",
    "embed_corpus",
    "recorded_model",
    "recorded_model_dir",
    "state_dir",
]
