"""The training loop of one run: ``train_run(config) -> TrainResult``.

Run folder (``config.out_dir``)::

    config.json                 the TrainConfig of the run
    validation.json             where validation pairs came from ("given", "auto" with the split, "none")
    metrics.jsonl               one record per optimizer step ("train") and per validation ("val")
    loss.png, recall.png        curves of the above (written after each validation and at the end)
    checkpoints/step-*/         resumable checkpoints (model/ + optimizer, RNG and loop state)
    best/                       the best model by validation (TwinEncoder.load-able)
    final/                      the model at the end of training
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from retrieval.config import TrainConfig
from retrieval.io import atomic_write_json
from retrieval.train import checkpoint as ckpt
from retrieval.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from retrieval.train.frozen import data_workers, training_data
from retrieval.train.history import MetricsLog, plot_history, train_record
from retrieval.train.optim import build_optimizer, set_lr
from retrieval.train.plateau import plan_decay, schedule_factor, stop_reason
from retrieval.train.result import Tally, TrainResult
from retrieval.train.sampling import (
    MinedNeighbours,
    compose_hard_batches,
    epoch_order,
    item_seed,
    mine_neighbours,
    plan_epoch,
    sample_weights,
)
from retrieval.train.setup import (
    Precision,
    StopSignals,
    check_config,
    effective_config,
    find_resume,
    prepare_model,
    read_data,
    resolve_precision,
    validate,
)
from retrieval.train.state import LoopState
from retrieval.train.step import StepParts, TrainingDivergedError, train_step

if TYPE_CHECKING:
    from retrieval.model import TwinEncoder

logger = logging.getLogger(__name__)

# Called after every optimizer step with that step's "train" record; returning True asks the run to
# stop as if interrupted (checkpoint, then return with status "interrupted").
StepCallback = Callable[[dict[str, Any]], Any]

PLOT_EVERY_SECONDS = 30.0  # plots are redrawn after a validation at most this often (and at the end)


def train_run(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: TwinEncoder | None = None,
    callback: StepCallback | None = None,
    image_cache: Any = None,
) -> TrainResult:
    """One training run in ``config.out_dir`` (the heads phase, or the adaptation phase in its own
    folder: :func:`retrieval.train.train` runs both); see :class:`TrainConfig`.

    ``resume=True`` continues the run in ``config.out_dir`` from its latest checkpoint (exactly: the
    same batches, augmentations and weights as an uninterrupted run) or starts it when there is
    none. ``model`` trains that model in place (e.g. from ``TwinEncoder.from_pretrained``) instead of
    building ``config.model``; ``callback(record)`` runs after every optimizer step with its metrics
    record and may return True to stop as if interrupted. Ctrl-C / SIGTERM stop at the next step boundary with a checkpoint (a second
    Ctrl-C aborts at once). A non-finite loss raises :class:`TrainingDivergedError` and leaves the
    last good checkpoint in place. Under ``torchrun`` every process calls this function; rank 0
    writes the files. ``image_cache`` is the training images' prepared cache
    (:class:`~retrieval.train.prefix.PrefixImageFeatures`) when the caller built it already.
    """
    check_config(config)
    config = effective_config(config, model)
    ctx = init_distributed(config.device)
    try:
        return _Run(config, ctx, resume, model, callback, image_cache).run()
    finally:
        shutdown(ctx)


class _Run:
    """One call of :func:`train`: the run's parts (built once) and its :class:`LoopState` (replaced
    after every step, epoch and validation, saved whole by every checkpoint)."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext,
        resume: bool,
        model: Any,
        callback: StepCallback | None,
        image_cache: Any = None,
    ) -> None:
        self.config, self.ctx, self.callback = config, ctx, callback
        self.prepared_image_cache = image_cache
        self.run_dir = Path(config.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.resume_from = find_resume(self.run_dir, resume, config)
        self.train_pairs, self.val_pairs, self.data_skipped, self.validation = read_data(
            config, check_val_images=ctx.is_main
        )
        column = config.sample_weight_column
        self.weights = sample_weights(self.train_pairs, column) if column else None
        self.model, self.config = prepare_model(
            config, ctx, model, self.train_pairs, self.resume_from, self.ckpt_root
        )
        self.precision: Precision = resolve_precision(config.precision, ctx.device)
        self.loss_fn = _build_loss(self.config).to(ctx.device)
        self.optimizer = build_optimizer(self.config, self.model)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.precision.use_scaler)
        self.state = LoopState(world_size=ctx.world_size)
        self.last_checkpoint: Path | None = None
        self.last_plot = -math.inf
        self.val_caches: dict[str, Any] = {}  # locked-tower outputs on the validation set
        self.mined: tuple[int, MinedNeighbours] | None = None  # (epoch mined, neighbours): hard negatives
        self.caches: tuple[Any, Any] = (None, None)  # (text, image) outputs of locked towers, when cached
        n = len(self.train_pairs)
        self.steps_per_epoch = len(
            plan_epoch(n, config.batch_size, ctx.world_size, ctx.rank, config.grad_accum)
        )
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        if self.resume_from is not None:
            self._restore(self.resume_from)

    # ------------------------------------------------------------------ set-up
    def _restore(self, path: Path) -> None:
        saved = ckpt.restore_training_state(path, self.optimizer, self.scaler, restore_rng=True)
        if saved.world_size != self.ctx.world_size:
            logger.warning(
                "resuming a run of %d process(es) with %d: the remaining data order differs",
                saved.world_size,
                self.ctx.world_size,
            )
        self.state = dataclasses.replace(saved, world_size=self.ctx.world_size)
        self.last_checkpoint = path
        logger.info("resuming from %s (step %d, epoch %d)", path, self.state.step, self.state.epoch)

    def _start(self) -> StepParts:
        """Write the run's config, drop log lines of a crashed run, prepare the data; the step's parts."""
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / "config.json")
            atomic_write_json(self.run_dir / "validation.json", self.validation, indent=2)
            if self.resume_from is not None or self.log.path.exists():
                # drop what a crashed run logged after its checkpoint
                self.log.truncate_after(self.state.step)
        # The training dataset, and the caches of fully locked towers (see retrieval.train.frozen).
        self.dataset, self.collate, text_cache, image_cache = training_data(
            self.config, self.model, self.train_pairs, self.ctx.device, self.prepared_image_cache
        )
        self.caches = (text_cache, image_cache)  # locked towers' outputs, also read by hard-negative mining
        self.model.train()
        return StepParts(
            model=self.model,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            scaler=self.scaler,
            ctx=self.ctx,
            precision=self.precision,
            clip_grad_norm=self.config.clip_grad_norm,
            accum_features=self.config.accum_features,
            text_cache=text_cache,
            image_cache=image_cache,
        )

    # -------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train epoch after epoch until the epochs are done or a stop comes: ``max_steps``, the time
        budget, early stopping, a callback or a signal. Each epoch ends with a validation and a
        checkpoint; a stop mid-epoch validates what it has (unless interrupted) and checkpoints."""
        parts = self._start()
        tally = Tally(started=time.perf_counter(), skipped=self.data_skipped)
        status = "completed"
        bar = _progress_bar(self.total_steps, self.state.step, self.config.progress and self.ctx.is_main)
        if self.state.step == 0:
            self._plan_decay(plateau=False)  # a cap of one decay's length decays from the start
        try:
            with StopSignals() as signals:
                while status == "completed" and self.state.epoch < self.config.epochs:
                    status = self._epoch(parts, signals, tally, bar)
        finally:
            self._workers = None  # the DataLoader's worker processes end with it
        bar.close()
        return self._finish(status, tally)

    def _epoch(self, parts: StepParts, signals: StopSignals, tally: Tally, bar: Any) -> str:
        """The rest of the current epoch, step by step; returns the run's status afterwards."""
        config, state = self.config, self.state
        if config.max_steps is not None and state.step >= config.max_steps:
            return "max_steps"
        n = len(self.train_pairs)
        order = epoch_order(n, state.epoch, config.seed, self.weights)
        if config.hard_negatives and state.epoch >= config.hard_negative_warmup:
            order = self._hard_negative_order(order)
        plan = plan_epoch(n, config.batch_size, self.ctx.world_size, self.ctx.rank, config.grad_accum)
        remaining = plan[state.step_in_epoch :]
        batches = self._loader(order, remaining)
        status = "completed"
        for micro_plan in remaining:
            record = self._step(parts, batches, len(micro_plan), tally, bar)
            status = self._stop_reason(record, signals, tally)
            epoch_done = self.state.step_in_epoch == len(plan)
            if status != "completed" and not epoch_done:
                if status != "interrupted":  # a planned stop: validate what we have
                    self._validate(self.state.epoch + self.state.step_in_epoch / len(plan))
                self._checkpoint()
                return status
            if self._checkpoint_due() and not epoch_done:
                self._checkpoint()
        self.state = self.state.after_epoch()
        if self._plan_decay(self._validate(self.state.epoch)) and status == "completed":
            status = "early_stopped"
        # a checkpoint after each validation (it keeps best/patience), when one is due, and at the end;
        # small epochs without validation do not pay for one each
        finished = status != "completed" or self.state.epoch >= config.epochs
        if self.val_pairs is not None or self._checkpoint_due() or finished:
            self._checkpoint()
        return status

    def _hard_negative_order(self, order: list[int]) -> list[int]:
        """The epoch's random order recomposed into batches of neighbours (re-mined when due)."""
        config, epoch = self.config, self.state.epoch
        if self.mined is None or epoch - self.mined[0] >= config.hard_negative_every:
            model = getattr(self.model, "module", self.model)
            found = mine_neighbours(
                model,
                self.train_pairs.pairs,
                config.hard_negative_neighbours,
                text_cache=self.caches[0],
                image_cache=self.caches[1],
            )
            self.mined = (epoch, found)  # a run resumed mid-epoch mines again with the resumed weights
        mined = self.mined[1]
        return compose_hard_batches(
            mined.neighbours, mined.pair_image, mined.captions, order,
            config.batch_size * self.ctx.world_size, config.hard_negative_fraction,
        )  # fmt: skip

    def _step(self, parts: StepParts, batches: Any, n_micro: int, tally: Tally, bar: Any) -> dict[str, Any]:
        """One optimizer step at the scheduled learning rate, seeded by its number; returns its record."""
        config, ctx, step = self.config, self.ctx, self.state.step
        _seed_step(item_seed(config.seed + 7919 * ctx.rank, -2, step), ctx.device)
        set_lr(self.optimizer, config.lr * self._lr_factor(step))
        try:
            result = train_step(parts, batches, n_micro)
        except TrainingDivergedError as exc:
            raise TrainingDivergedError(self._diverged_message(exc)) from None
        self.state = self.state.after_step()
        tally.add(result)
        record = train_record(
            self.state,
            result,
            lr=self.optimizer.param_groups[0]["lr"],
            logit_scale=float(self.model.logit_scale.detach().exp()),
            steps_per_epoch=self.steps_per_epoch,
        )
        if ctx.is_main:
            self.log.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}", pairs_s=f"{record['pairs_per_s']:.0f}", refresh=False)
        return record

    def _lr_factor(self, step: int) -> float:
        return schedule_factor(self.config, self.state, step, self.total_steps)

    def _plan_decay(self, plateau: bool) -> bool:
        """At an epoch boundary (after its validation): update the schedule; whether to stop now."""
        self.state, stop = plan_decay(self.config, self.state, plateau, self.steps_per_epoch, self.total_steps)
        return stop

    def _stop_reason(self, record: dict[str, Any], signals: StopSignals, tally: Tally) -> str:
        """Why to stop after this step: "interrupted" (a callback or a signal on any rank),
        "time_budget" or "max_steps"; "completed" when the run goes on."""
        config = self.config
        stop = (bool(self.callback(record)) if self.callback is not None else False) or signals.requested
        over_time = config.time_budget is not None and tally.seconds() >= config.time_budget
        n_stop, n_late = all_reduce_sum([float(stop), float(over_time)], self.ctx)
        if n_stop:
            return "interrupted"
        if n_late:
            return "time_budget"
        if config.max_steps is not None and self.state.step >= config.max_steps:
            return "max_steps"
        return "completed"

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return bool(every) and self.state.step % every == 0

    def _loader(self, order: list[int], steps: list[list[list[int]]]) -> Any:
        """The epoch's micro-batches, prepared ahead by DataLoader worker processes when images are
        decoded every step (:func:`~retrieval.train.frozen.data_workers`); the workers live for the
        whole run (one start, not one per epoch), each epoch handing them its own keys."""
        config = self.config
        keys = [
            [(order[pos], item_seed(config.seed, self.state.epoch, pos)) for pos in micro]
            for step in steps
            for micro in step
        ]
        workers = data_workers(config, self.collate)
        pin = self.ctx.device.type == "cuda"
        if workers == 0:
            loader = DataLoader(self.dataset, batch_sampler=keys, collate_fn=self.collate, pin_memory=pin)
            return iter(loader)
        if getattr(self, "_workers", None) is None:
            self._plan = _EpochKeys()
            self._workers = DataLoader(
                self.dataset,
                batch_sampler=self._plan,
                collate_fn=self.collate,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=True,
            )
        self._plan.keys = keys
        return iter(self._workers)

    def _diverged_message(self, exc: Exception) -> str:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        return (
            f"{exc} at step {self.state.step + 1} (epoch {self.state.epoch + 1}); training stopped, {where}. "
            "Lower lr, raise warmup_steps, set clip_grad_norm or use precision='fp32', then resume"
        )

    # ---------------------------------------------------------- epoch end / files
    def _validate(self, epoch: float) -> bool:
        """Validate (rank 0), keep the best model, log; returns True when early stopping triggers.
        ``epoch`` is the number of epochs trained so far (fractional for a stop mid-epoch)."""
        config, ctx = self.config, self.ctx
        stop = 0.0
        if ctx.is_main and self.val_pairs is not None:
            metrics = validate(self.model, self.val_pairs, config, ctx.device, self.val_caches)
            value = metrics.get(config.select_metric)
            if value is None:
                raise ValueError(
                    f"select_metric {config.select_metric!r} is not a validation metric; "
                    f"choose one of {sorted(metrics)}"
                )
            self.state, improved = self.state.after_validation(value, metrics, config.min_improvement)
            if improved:
                _save_model(self.model, self.run_dir / "best")
            self.log.append(
                {
                    "kind": "val",
                    "step": self.state.step,
                    "epoch": round(epoch, 4),
                    "improved": improved,
                    **metrics,
                }
            )
            logger.info(
                "epoch %g: %s %.4f (best %.4f)%s",
                round(epoch, 2),
                config.select_metric,
                value,
                self.state.best,
                "" if improved else f", {self.state.bad_epochs} epoch(s) without improvement",
            )
            patience = config.early_stopping_patience
            stop = float(patience is not None and patience > 0 and self.state.bad_epochs >= patience)
            if time.perf_counter() - self.last_plot > PLOT_EVERY_SECONDS:
                plot_history(self.log.records(), self.run_dir)
                self.last_plot = time.perf_counter()
        if ctx.enabled:
            stop, bad = all_reduce_sum([stop, float(self.state.bad_epochs if ctx.is_main else 0)], ctx)
            self.state = dataclasses.replace(self.state, bad_epochs=int(bad))
        return stop > 0

    def _checkpoint(self) -> None:
        if self.ctx.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(
                self.ckpt_root,
                self.model,
                self.optimizer,
                self.state,
                self.scaler,
                self.config.keep_checkpoints,
            )
        barrier(self.ctx)

    def _finish(self, status: str, tally: Tally) -> TrainResult:
        seconds = tally.seconds()
        final = self.run_dir / "final"
        if self.ctx.is_main and status != "interrupted":
            _save_model(self.model, final)
        if self.ctx.is_main:
            plot_history(self.log.records(), self.run_dir)
        barrier(self.ctx)
        if (self.run_dir / "best").is_dir():
            model_dir = self.run_dir / "best"
        elif status != "interrupted":
            model_dir = final
        else:
            model_dir = (self.last_checkpoint / "model") if self.last_checkpoint else final
        state = self.state
        why = stop_reason(status, self.config, state)
        logger.info(
            "training %s (%s) after %d steps (%d epochs, %.1f s, %.0f pairs/s)",
            status,
            why,
            state.step,
            state.epoch,
            seconds,
            tally.pairs / max(seconds, 1e-9),
        )
        return TrainResult(
            run_dir=self.run_dir,
            model_dir=model_dir,
            status=status,
            steps=state.step,
            epochs_completed=state.epoch,
            best_metric=state.best,
            best_metrics=dict(state.best_metrics),
            last_loss=tally.last_loss,
            pairs_per_second=tally.pairs / max(seconds, 1e-9),
            seconds=seconds,
            skipped=tally.skipped,
            metrics_path=self.log.path,
            checkpoint=self.last_checkpoint,
            stop_reason=why,
            validation=dict(self.validation),
        )


def _seed_step(seed: int, device: torch.device) -> None:
    """Seed this step's randomness (dropout) so a resumed run draws exactly what the original did.
    Only the generators in use are seeded (``torch.manual_seed`` also queues every accelerator)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _build_loss(config: TrainConfig) -> torch.nn.Module:
    from retrieval.losses import LOSSES

    if config.loss == "clip":
        return LOSSES["clip"](multi_positive=config.multi_positive)
    return LOSSES[config.loss]()


def _save_model(model: Any, directory: Path) -> None:
    """``model.save`` is atomic (temporary folder renamed into place)."""
    model.save(directory)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not show, unit="step", dynamic_ncols=True, leave=False)


__all__ = ["StepCallback", "train_run"]


class _EpochKeys:
    """The batch sampler of a run's persistent DataLoader: the current epoch's micro-batch keys."""

    def __init__(self) -> None:
        self.keys: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Any:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)
