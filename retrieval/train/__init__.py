"""Train a :class:`~retrieval.model.TwinEncoder`: ``train(config: TrainConfig) -> TrainResult``.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.train.adaptation` -- :func:`train`: the heads, then partial adaptation of the
  image tower, kept when validation says so.
* :mod:`~retrieval.train.loop` -- :func:`~retrieval.train.loop.train_run`: one run: set-up, the
  epoch loop, validation, the result.
* :mod:`~retrieval.train.state` -- the loop's state as one value, saved and restored by checkpoints.
* :mod:`~retrieval.train.result` -- :class:`TrainResult`, what a run reports.
* :mod:`~retrieval.train.step` -- one optimizer step: micro-batches, features, loss, update.
* :mod:`~retrieval.train.setup` -- checks, data, model and precision before the first step.
* :mod:`~retrieval.train.checkpoint` -- resumable checkpoints (safetensors + JSON, no pickle).
* :mod:`~retrieval.train.plateau` -- when to decay the learning rate and stop; why a run stopped.
* :mod:`~retrieval.train.valsplit` -- the automatic validation split when no validation data is given.
* :mod:`~retrieval.train.prefix` -- a partly trained image tower on its locked prefix's cached output.
* :mod:`~retrieval.train.optim`, :mod:`~retrieval.train.sampling`, :mod:`~retrieval.train.frozen`,
  :mod:`~retrieval.train.distributed`, :mod:`~retrieval.train.history` -- optimizers and schedule,
  data order, cached locked towers, data parallelism, metrics log and plots.
"""

from __future__ import annotations

from retrieval.config import TrainConfig
from retrieval.train.adaptation import train
from retrieval.train.loop import StepCallback
from retrieval.train.result import TrainResult
from retrieval.train.step import TrainingDivergedError

__all__ = ["StepCallback", "TrainConfig", "TrainResult", "TrainingDivergedError", "train"]
