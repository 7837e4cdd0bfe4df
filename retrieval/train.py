"""Train a :class:`~retrieval.model.TwinEncoder`: ``train(config: TrainConfig) -> TrainResult``.

The implementation lives in :mod:`retrieval.training`; this module is the stable import path.
"""

from __future__ import annotations

from retrieval.training import StepCallback, TrainingDivergedError, TrainResult, train

__all__ = ["StepCallback", "TrainResult", "TrainingDivergedError", "train"]
