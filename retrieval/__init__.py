"""Siamese cross-modal retrieval: twin encoders, losses, training, embedding, search, evaluation."""

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
    "Pair": "retrieval.data",
    "PairSet": "retrieval.data",
    "PairDataset": "retrieval.data",
    "ImageDecodeError": "retrieval.data",
    "collate_pairs": "retrieval.data",
    "load_image": "retrieval.data",
    "read_pairs": "retrieval.data",
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
