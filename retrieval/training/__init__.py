"""Training twin encoders: the loop, optimizers and schedule, sampling, checkpoints, data parallelism.

The public entry point is :func:`retrieval.train.train` (re-exported here).
"""

from __future__ import annotations

from retrieval.training.loop import StepCallback, TrainResult, train
from retrieval.training.step import TrainingDivergedError

__all__ = ["StepCallback", "TrainResult", "TrainingDivergedError", "train"]
