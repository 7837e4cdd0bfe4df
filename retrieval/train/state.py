"""The training loop's state as one value: what a checkpoint saves and a resumed run restores.

Everything else a run needs is either rebuilt identically from the config (data order, schedule,
augmentations: all seeded by the step and the epoch) or saved beside it by the checkpoint
(weights, optimizer, grad scaler, random generators), so this value plus that is the whole run.
It is immutable: the loop replaces it after each step, epoch and validation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["LoopState"]


@dataclasses.dataclass(frozen=True)
class LoopState:
    """Where a training run is."""

    step: int = 0  # optimizer steps taken in total
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps taken in the current epoch
    best: float | None = None  # best validation value of config.select_metric so far
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # all metrics at the best
    bad_epochs: int = 0  # validations without improvement since the best (early stopping)
    world_size: int = 1  # processes of the run that saved it

    def after_step(self) -> LoopState:
        """One optimizer step later."""
        return dataclasses.replace(self, step=self.step + 1, step_in_epoch=self.step_in_epoch + 1)

    def after_epoch(self) -> LoopState:
        """The current epoch completed."""
        return dataclasses.replace(self, epoch=self.epoch + 1, step_in_epoch=0)

    def after_validation(self, value: float, metrics: dict[str, float]) -> tuple[LoopState, bool]:
        """The state after a validation scoring ``value`` (higher is better), and whether it improved."""
        if self.best is None or value > self.best:
            return dataclasses.replace(self, best=value, best_metrics=dict(metrics), bad_epochs=0), True
        return dataclasses.replace(self, bad_epochs=self.bad_epochs + 1), False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the checkpoint's ``state.json`` holds these keys)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        """The state saved by :meth:`to_dict`; keys of other parts of ``state.json`` are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
