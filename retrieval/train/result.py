"""What a training run reports: :class:`TrainResult`, and the :class:`Tally` of one call it is built from."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from retrieval.train.step import StepResult

__all__ = ["Tally", "TrainResult"]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    run_dir: Path  # the run folder (config.out_dir)
    model_dir: Path  # the model to use: best/ when validated, else final/ (or the last checkpoint's model)
    status: str  # "completed" | "max_steps" | "early_stopped" | "time_budget" | "interrupted"
    steps: int  # optimizer steps taken in total (including those before a resume)
    epochs_completed: int  # full passes over the training pairs
    best_metric: float | None  # best value of config.select_metric (None without validation)
    best_metrics: dict[str, float]  # every validation metric at the best epoch
    last_loss: float  # training loss of the last step
    pairs_per_second: float  # training throughput of this call (all ranks)
    seconds: float  # wall time of this call's training loop
    skipped: int  # pairs skipped: unreadable manifest rows, empty captions, broken images met in batches
    metrics_path: Path  # metrics.jsonl
    checkpoint: Path | None  # the last checkpoint written
    stop_reason: str = ""  # why training stopped, in words (also logged)
    validation: dict = dataclasses.field(default_factory=dict)  # where validation came from (validation.json)
    # the phases tried (retrieval.train.adaptation): per phase its name, what trained, its run folder,
    # status, epochs, steps, seconds, best validation, and whether its model was kept
    phases: tuple = ()
    adaptation: str = ""  # what was decided about adapting the image tower, and why (also logged)


@dataclasses.dataclass
class Tally:
    """What this call of :func:`~retrieval.train.train` did so far (reported in :class:`TrainResult`, not checkpointed)."""

    started: float  # perf_counter at the first step of this call
    pairs: int = 0  # pairs trained on by this call, all ranks
    skipped: int = 0  # pairs skipped: unreadable rows before training, broken images in batches
    last_loss: float = math.nan  # loss of the last step

    def add(self, result: StepResult) -> None:
        self.pairs += result.pairs
        self.skipped += result.skipped
        self.last_loss = result.loss

    def seconds(self) -> float:
        return time.perf_counter() - self.started
