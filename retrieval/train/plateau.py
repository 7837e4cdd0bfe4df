"""When training stops: the learning-rate schedule's phase decisions and the stop reason in words.

With ``schedule="plateau"`` (warmup-stable-decay) the decay phase starts when validation plateaus
(``early_stopping_patience`` validations without a gain of ``min_improvement``; see
:meth:`LoopState.after_validation`) or when the epoch cap comes within one decay's length, and a
run stops when a plateau's decay has run its course. With ``schedule="reduce"`` (reduce-on-plateau)
each plateau instead multiplies the learning rate by ``lr_reduce_factor`` and patience counts
afresh; the plateau after ``max_lr_reductions`` cuts, or after a cut that brought no gain, stops the
run (without validation both decay to the cap). With ``schedule="cosine"`` the schedule is fixed in
advance and a plateau stops the run at once (early stopping). Every decision is a
function of the config and the :class:`~retrieval.train.state.LoopState`, which checkpoints save,
so a resumed run makes the same decisions at the same steps.
"""

from __future__ import annotations

import logging

from retrieval.config import TrainConfig
from retrieval.train.optim import decay_length, lr_factor, wsd_factor
from retrieval.train.state import LoopState

__all__ = ["plan_decay", "schedule_factor", "stop_reason"]

logger = logging.getLogger(__name__)


def schedule_factor(config: TrainConfig, state: LoopState, step: int, total_steps: int) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based)."""
    if config.schedule == "cosine":
        return lr_factor(step, config.warmup_steps, total_steps, config.min_lr_ratio)
    factor = wsd_factor(step, config.warmup_steps, state.decay_start, state.decay_steps, config.min_lr_ratio)
    if config.schedule == "reduce":
        factor *= config.lr_reduce_factor**state.reductions
    return factor


def plan_decay(
    config: TrainConfig, state: LoopState, plateau: bool, steps_per_epoch: int, total_steps: int
) -> tuple[LoopState, bool]:
    """At an epoch boundary, after its validation (``plateau``: patience ran out): the new state and
    whether training should stop now. ``total_steps`` is the cap (``epochs`` or ``max_steps``)."""
    if config.schedule == "cosine":
        return state, plateau
    if state.decay_start is not None:  # a decay forced by the cap ends with the epochs
        return state, state.decay_done and state.decay_reason == "plateau"
    if plateau and config.schedule == "reduce":
        if state.reductions >= config.max_lr_reductions or not state.gained_since_reduction:
            logger.info(
                "validation plateau after %d epochs at %g x the learning rate (%d cut(s)%s): stopping",
                state.epoch,
                config.lr_reduce_factor**state.reductions,
                state.reductions,
                "" if state.gained_since_reduction else ", no gain since the last",
            )
            return state, True
        logger.info(
            "validation plateau after %d epochs (%s gained less than %g in %d validations): "
            "the learning rate is cut to %g x",
            state.epoch,
            config.select_metric,
            config.min_improvement,
            state.bad_epochs,
            config.lr_reduce_factor ** (state.reductions + 1),
        )
        return state.with_reduction(), False
    length = decay_length(state.step, steps_per_epoch, config.decay_fraction)
    if plateau:
        reason = "plateau"
    elif state.step + length >= total_steps:
        length, reason = total_steps - state.step, "cap"
    else:
        return state, False
    if reason == "plateau":
        logger.info(
            "validation plateau after %d epochs (%s gained less than %g in %d validations): "
            "decaying the learning rate over %d more step(s), then stopping",
            state.epoch,
            config.select_metric,
            config.min_improvement,
            state.bad_epochs,
            length,
        )
    return state.with_decay(length, reason), length <= 0


def stop_reason(status: str, config: TrainConfig, state: LoopState) -> str:
    """Why a run ended with ``status``, in words."""
    plateau = (
        f"{config.select_metric} gained less than {config.min_improvement:g} in "
        f"{config.early_stopping_patience} validations"
    )
    if status == "early_stopped" and config.schedule == "plateau":
        return f"validation plateau ({plateau}), then {state.decay_steps} steps of learning-rate decay"
    if status == "early_stopped" and config.schedule == "reduce":
        cuts = f"{state.reductions} cut(s) of the learning rate by {config.lr_reduce_factor:g}"
        if not state.gained_since_reduction:
            return f"validation plateau ({plateau}) with no gain since the last of {cuts}"
        return f"validation plateau ({plateau}) after {cuts}"
    if status == "early_stopped":
        return f"early stopping: {plateau}"
    if status == "completed":
        return f"the epoch cap of {config.epochs} was reached"
    if status == "max_steps":
        return f"max_steps={config.max_steps} reached"
    if status == "time_budget":
        return f"time_budget={config.time_budget:g}s used up"
    if status == "interrupted":
        return "interrupted (resume with --resume)"
    return status
