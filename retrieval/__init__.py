"""Siamese cross-modal retrieval: twin encoders, losses, training, embedding, search, evaluation.

The package tree is the map. The jobs, each a package whose ``__init__`` is its public API:

* :mod:`retrieval.train` -- ``train(TrainConfig) -> TrainResult``
* :mod:`retrieval.embed` -- ``embed_corpus(model, source, collection, EmbedConfig)``
* :mod:`retrieval.search` -- ``Searcher``, ``search_collection``
* :mod:`retrieval.evaluate` -- ``evaluate_model``, ``write_report``, pure metrics
* :mod:`retrieval.serve` -- ``create_app(ServeConfig)``, ``run``

One home for each concept the jobs share:

* :mod:`retrieval.config` -- settings dataclasses: every default and choice
* :mod:`retrieval.encoding` -- the inference path (batching, prefetch, device, mode, skipped items)
* :mod:`retrieval.io` -- durable file operations (atomic writes, staged folders, locks)
* :mod:`retrieval.model` -- ``TwinEncoder``, ``load_model(name)``; :mod:`retrieval.towers`, :mod:`retrieval.losses`
* :mod:`retrieval.pretrained` -- naming a model: toolkit folder, transformers CLIP/SigLIP folder or hub id
* :mod:`retrieval.data` -- readers, safe decoding, transforms; :mod:`retrieval.datasets` -- OpenMoji
* :mod:`indexes.fingerprint` -- the check that a model matches a collection (in ``indexes``)
* :mod:`retrieval.cli` -- the command line, one module per subcommand
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> the module defining them; imported on first access so `import retrieval`
# (and the CLI) stays fast and does not pull in torch until a model is used.
_LAZY: dict[str, str] = {
    "ModelConfig": "retrieval.config",
    "TwinEncoder": "retrieval.model",
    "build_model": "retrieval.model",
    "load_model": "retrieval.model",
    "Pair": "retrieval.data",
    "PairSet": "retrieval.data",
    "PairDataset": "retrieval.data",
    "ImageDecodeError": "retrieval.data",
    "collate_pairs": "retrieval.data",
    "load_image": "retrieval.data",
    "read_pairs": "retrieval.data",
    "read_corpus": "retrieval.data",
    "Corpus": "retrieval.data",
    "Record": "retrieval.data",
    "EvalConfig": "retrieval.config",
    "evaluate_model": "retrieval.evaluate",
    "retrieval_metrics": "retrieval.evaluate",
    "retrieval_metrics_from_embeddings": "retrieval.evaluate",
    "EmbedConfig": "retrieval.config",
    "EmbedSummary": "retrieval.embed",
    "embed_corpus": "retrieval.embed",
    "Hit": "retrieval.search",
    "Searcher": "retrieval.search",
    "TrainConfig": "retrieval.config",
    "TrainResult": "retrieval.train",
    "TrainingDivergedError": "retrieval.train",
    "LOSSES": "retrieval.losses",
    "ServeConfig": "retrieval.config",
    "create_app": "retrieval.serve",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
