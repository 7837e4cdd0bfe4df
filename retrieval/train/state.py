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
    bad_epochs: int = 0  # validations without a gain since the last one (plateau / early stopping)
    world_size: int = 1  # processes of the run that saved it
    gain_ref: float | None = None  # value at the last gain: a gain beats it by at least min_improvement
    decay_start: int | None = None  # "plateau" schedule: step where the decay began (None: not yet)
    decay_steps: int = 0  # "plateau" schedule: length of the decay in optimizer steps
    decay_reason: str = ""  # why the decay began ("plateau" | "cap")
    reductions: int = 0  # "reduce" schedule: plateaus that cut the learning rate so far
    reduced_ref: float | None = None  # "reduce" schedule: gain_ref when the last cut was made

    def after_step(self) -> LoopState:
        """One optimizer step later."""
        return dataclasses.replace(self, step=self.step + 1, step_in_epoch=self.step_in_epoch + 1)

    def after_epoch(self) -> LoopState:
        """The current epoch completed."""
        return dataclasses.replace(self, epoch=self.epoch + 1, step_in_epoch=0)

    def after_validation(
        self, value: float, metrics: dict[str, float], min_improvement: float = 0.0
    ) -> tuple[LoopState, bool]:
        """The state after a validation scoring ``value`` (higher is better), and whether it is the best
        so far (then ``best/`` is replaced). Patience is counted against gains: ``bad_epochs`` resets
        only when ``value`` beats the value of the last gain by at least ``min_improvement``, so a slow
        creep of tiny improvements still ends in a plateau."""
        state = self
        improved = self.best is None or value > self.best
        if improved:
            state = dataclasses.replace(state, best=value, best_metrics=dict(metrics))
        if self.gain_ref is None or value >= self.gain_ref + min_improvement:
            return dataclasses.replace(state, gain_ref=value, bad_epochs=0), improved
        return dataclasses.replace(state, bad_epochs=self.bad_epochs + 1), improved

    def with_decay(self, steps: int, reason: str) -> LoopState:
        """The decay phase of the "plateau" schedule starts now and lasts ``steps`` optimizer steps."""
        return dataclasses.replace(self, decay_start=self.step, decay_steps=steps, decay_reason=reason)

    def with_reduction(self) -> LoopState:
        """The "reduce" schedule cuts the learning rate now; patience counts afresh."""
        return dataclasses.replace(
            self, reductions=self.reductions + 1, reduced_ref=self.gain_ref, bad_epochs=0
        )

    @property
    def gained_since_reduction(self) -> bool:
        """A gain was made since the last cut of the learning rate (or none was made yet)."""
        return self.reductions == 0 or self.gain_ref != self.reduced_ref

    @property
    def decay_done(self) -> bool:
        """The decay phase has started and run its course."""
        return self.decay_start is not None and self.step >= self.decay_start + self.decay_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the checkpoint's ``state.json`` holds these keys)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        """The state saved by :meth:`to_dict`; keys of other parts of ``state.json`` are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
