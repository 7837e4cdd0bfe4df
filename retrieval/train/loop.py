"""The training loop: ``train(config) -> TrainResult``.

Run folder (``config.out_dir``)::

    config.json                 the TrainConfig of the run
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
from retrieval.train import checkpoint as ckpt
from retrieval.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from retrieval.train.frozen import training_data
from retrieval.train.history import MetricsLog, plot_history
from retrieval.train.optim import build_optimizer, lr_factor, set_lr
from retrieval.train.sampling import epoch_order, item_seed, plan_epoch, sample_weights
from retrieval.train.setup import (
    Precision,
    StopSignals,
    check_config,
    check_resume_config,
    effective_config,
    prepare_model,
    read_data,
    resolve_precision,
    validate,
)
from retrieval.train.step import TrainingDivergedError, train_step

if TYPE_CHECKING:
    from retrieval.model import TwinEncoder

logger = logging.getLogger(__name__)

# Called after every optimizer step with that step's "train" record; returning True asks the run to
# stop as if interrupted (checkpoint, then return with status "interrupted").
StepCallback = Callable[[dict[str, Any]], Any]

PLOT_EVERY_SECONDS = 30.0  # plots are redrawn after a validation at most this often (and at the end)


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


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: TwinEncoder | None = None,
    callback: StepCallback | None = None,
) -> TrainResult:
    """Train a :class:`~retrieval.model.TwinEncoder` on ``config.train_data``; see :class:`TrainConfig`.

    ``resume=True`` continues the run in ``config.out_dir`` from its latest checkpoint (exactly: the
    same batches, augmentations and weights as an uninterrupted run) or starts it when there is
    none. ``model`` trains that model in place (e.g. from ``TwinEncoder.from_pretrained``) instead of
    building ``config.model``; ``callback(record)`` runs after every optimizer step with its metrics
    record and may return True to stop as if interrupted. Ctrl-C / SIGTERM stop at the next step boundary with a checkpoint (a second
    Ctrl-C aborts at once). A non-finite loss raises :class:`TrainingDivergedError` and leaves the
    last good checkpoint in place. Under ``torchrun`` every process calls this function; rank 0
    writes the files.
    """
    check_config(config)
    config = effective_config(config, model)
    ctx = init_distributed(config.device)
    try:
        return _Run(config, ctx, resume, model, callback).run()
    finally:
        shutdown(ctx)


class _Run:
    def __init__(
        self, config: TrainConfig, ctx: DistContext, resume: bool, model: Any, callback: StepCallback | None
    ) -> None:
        self.config, self.ctx, self.callback = config, ctx, callback
        self.run_dir = Path(config.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.resume_from = self._find_resume(resume)
        self.train_pairs, self.val_pairs, self.skipped = read_data(config, check_val_images=ctx.is_main)
        column = config.sample_weight_column
        self.weights = sample_weights(self.train_pairs, column) if column else None
        self.model, self.config = prepare_model(
            config, ctx, model, self.train_pairs, self.resume_from, self.ckpt_root
        )
        self.precision: Precision = resolve_precision(config.precision, ctx.device)
        self.loss_fn = _build_loss(self.config.loss).to(ctx.device)
        self.optimizer = build_optimizer(self.config, self.model)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.precision.use_scaler)
        self.step = self.epoch = self.step_in_epoch = 0
        self.best: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.bad_epochs = 0
        self.last_checkpoint: Path | None = None
        self.last_plot = -math.inf
        self.val_caches: dict[str, Any] = {}  # locked-tower outputs on the validation set
        if self.resume_from is not None:
            state = ckpt.restore_training_state(
                self.resume_from, self.optimizer, self.scaler, restore_rng=True
            )
            self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            self.best, self.best_metrics = state.get("best"), state.get("best_metrics", {})
            self.bad_epochs = state.get("bad_epochs", 0)
            self.last_checkpoint = self.resume_from
            if state.get("world_size", 1) != ctx.world_size:
                logger.warning(
                    "resuming a run of %d process(es) with %d: the remaining data order differs",
                    state.get("world_size", 1),
                    ctx.world_size,
                )
            logger.info("resuming from %s (step %d, epoch %d)", self.resume_from, self.step, self.epoch)

    # ------------------------------------------------------------------ set-up
    def _find_resume(self, resume: bool) -> Path | None:
        latest = ckpt.latest_checkpoint(self.ckpt_root) if self.ckpt_root.exists() else None
        if not resume:
            if latest is not None or self.log.path.exists():
                raise FileExistsError(
                    f"{self.run_dir} already holds a training run: pass resume=True (--resume) to continue it, "
                    "or choose a new out_dir"
                )
            return None
        if latest is None:
            logger.info("no checkpoint in %s yet: starting a new run", self.ckpt_root)
            return None
        saved = self.run_dir / "config.json"
        if saved.is_file():
            check_resume_config(TrainConfig.load(saved), self.config)
        return latest

    # -------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        config, ctx = self.config, self.ctx
        n = len(self.train_pairs)
        steps_per_epoch = len(plan_epoch(n, config.batch_size, ctx.world_size, ctx.rank, config.grad_accum))
        total = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.run_dir / "config.json")
            if self.resume_from is not None or self.log.path.exists():
                self.log.truncate_after(self.step)  # drop what a crashed run logged after its checkpoint
        self._prepare_data()
        self.model.train()
        status, start, pairs_seen, last_loss = "completed", time.perf_counter(), 0, math.nan
        bar = _progress_bar(total, self.step, enabled=config.progress and ctx.is_main)
        with StopSignals() as signals:
            while self.epoch < config.epochs and status == "completed":
                if config.max_steps is not None and self.step >= config.max_steps:
                    status = "max_steps"
                    break
                order = epoch_order(n, self.epoch, config.seed, self.weights)
                plan = plan_epoch(n, config.batch_size, ctx.world_size, ctx.rank, config.grad_accum)
                batches = self._loader(order, plan[self.step_in_epoch :])
                for micro_plan in plan[self.step_in_epoch :]:
                    _seed_step(item_seed(config.seed + 7919 * ctx.rank, -2, self.step), ctx.device)
                    set_lr(
                        self.optimizer,
                        config.lr * lr_factor(self.step, config.warmup_steps, total, config.min_lr_ratio),
                    )
                    try:
                        result = train_step(self, batches, len(micro_plan))
                    except TrainingDivergedError as exc:
                        raise TrainingDivergedError(self._diverged_message(exc)) from None
                    self.step += 1
                    self.step_in_epoch += 1
                    pairs_seen += result.pairs
                    self.skipped += result.skipped
                    last_loss = result.loss
                    record = self._train_record(result, steps_per_epoch)
                    if ctx.is_main:
                        self.log.append(record)
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{result.loss:.4f}", pairs_s=f"{record['pairs_per_s']:.0f}", refresh=False
                        )
                    stop = bool(self.callback(record)) if self.callback is not None else False
                    stop = stop or signals.requested
                    over_time = (
                        config.time_budget is not None and time.perf_counter() - start >= config.time_budget
                    )
                    n_stop, n_late = all_reduce_sum([float(stop), float(over_time)], ctx)
                    last_of_epoch = self.step_in_epoch == len(plan)
                    at_max = config.max_steps is not None and self.step >= config.max_steps
                    if n_stop or n_late or at_max:
                        status = "interrupted" if n_stop else ("time_budget" if n_late else "max_steps")
                        if not last_of_epoch:
                            if status != "interrupted":  # a planned stop: validate what we have
                                self._end_of_epoch(self.epoch + self.step_in_epoch / len(plan))
                            self._checkpoint()
                            break
                    if (
                        config.checkpoint_every
                        and self.step % config.checkpoint_every == 0
                        and not last_of_epoch
                    ):
                        self._checkpoint()
                if self.step_in_epoch >= len(plan):  # the epoch is complete
                    self.epoch += 1
                    self.step_in_epoch = 0
                    if self._end_of_epoch(self.epoch) and status == "completed":
                        status = "early_stopped"
                    # a checkpoint after each validation (it keeps best/patience), when one is due, and
                    # at the end; small epochs without validation do not pay for one each
                    due = config.checkpoint_every and self.step % config.checkpoint_every == 0
                    finished = status != "completed" or self.epoch >= config.epochs
                    if self.val_pairs is not None or due or finished:
                        self._checkpoint()
        bar.close()
        seconds = time.perf_counter() - start
        return self._finish(status, seconds, pairs_seen, last_loss)

    def _prepare_data(self) -> None:
        """The training dataset, and the caches of fully locked towers (see :mod:`.frozen`)."""
        self.dataset, self.collate, self.text_cache, self.image_cache = training_data(
            self.config,
            self.model,
            self.train_pairs,
            self.ctx.device,
            self.precision.autocast(self.ctx.device),
        )

    def _loader(self, order: list[int], steps: list[list[list[int]]]) -> Any:
        config = self.config
        keys = [
            [(order[pos], item_seed(config.seed, self.epoch, pos)) for pos in micro]
            for step in steps
            for micro in step
        ]
        loader = DataLoader(
            self.dataset,
            batch_sampler=keys,
            collate_fn=self.collate,
            num_workers=config.num_workers,
            pin_memory=self.ctx.device.type == "cuda",
        )
        return iter(loader)

    def _train_record(self, result: Any, steps_per_epoch: int) -> dict[str, Any]:
        record = {
            "kind": "train",
            "step": self.step,
            "epoch": round(self.epoch + self.step_in_epoch / max(1, steps_per_epoch), 4),
            "loss": result.loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "logit_scale": float(self.model.logit_scale.detach().exp()),
            "pairs": result.pairs,
            "pairs_per_s": result.pairs / max(result.seconds, 1e-9),
            "data_s": result.data_seconds,
            "compute_s": result.seconds - result.data_seconds,
        }
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        if result.skipped:
            record["skipped"] = result.skipped
        return record

    def _diverged_message(self, exc: Exception) -> str:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        return (
            f"{exc} at step {self.step + 1} (epoch {self.epoch + 1}); training stopped, {where}. "
            "Lower lr, raise warmup_steps, set clip_grad_norm or use precision='fp32', then resume"
        )

    # ---------------------------------------------------------- epoch end / files
    def _end_of_epoch(self, epoch: float) -> bool:
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
            improved = self.best is None or value > self.best
            if improved:
                self.best, self.best_metrics, self.bad_epochs = value, metrics, 0
                _save_model(self.model, self.run_dir / "best")
            else:
                self.bad_epochs += 1
            self.log.append(
                {"kind": "val", "step": self.step, "epoch": round(epoch, 4), "improved": improved, **metrics}
            )
            logger.info(
                "epoch %g: %s %.4f (best %.4f)%s",
                round(epoch, 2),
                config.select_metric,
                value,
                self.best,
                "" if improved else f", {self.bad_epochs} epoch(s) without improvement",
            )
            patience = config.early_stopping_patience
            stop = float(patience is not None and patience > 0 and self.bad_epochs >= patience)
            if time.perf_counter() - self.last_plot > PLOT_EVERY_SECONDS:
                plot_history(self.log.records(), self.run_dir)
                self.last_plot = time.perf_counter()
        if ctx.enabled:
            stop, bad = all_reduce_sum([stop, float(self.bad_epochs if ctx.is_main else 0)], ctx)
            self.bad_epochs = int(bad)
        return stop > 0

    def _checkpoint(self) -> None:
        if self.ctx.is_main:
            state = {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "best": self.best,
                "best_metrics": self.best_metrics,
                "bad_epochs": self.bad_epochs,
                "world_size": self.ctx.world_size,
            }
            self.last_checkpoint = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                self.model,
                self.optimizer,
                state,
                self.scaler,
                self.config.keep_checkpoints,
            )
        barrier(self.ctx)

    def _finish(self, status: str, seconds: float, pairs_seen: int, last_loss: float) -> TrainResult:
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
        epochs_done = self.epoch
        logger.info(
            "training %s after %d steps (%d epochs, %.1f s, %.0f pairs/s)",
            status,
            self.step,
            epochs_done,
            seconds,
            pairs_seen / max(seconds, 1e-9),
        )
        return TrainResult(
            run_dir=self.run_dir,
            model_dir=model_dir,
            status=status,
            steps=self.step,
            epochs_completed=epochs_done,
            best_metric=self.best,
            best_metrics=dict(self.best_metrics),
            last_loss=last_loss,
            pairs_per_second=pairs_seen / max(seconds, 1e-9),
            seconds=seconds,
            skipped=self.skipped,
            metrics_path=self.log.path,
            checkpoint=self.last_checkpoint,
        )


def _seed_step(seed: int, device: torch.device) -> None:
    """Seed this step's randomness (dropout) so a resumed run draws exactly what the original did.
    Only the generators in use are seeded (``torch.manual_seed`` also queues every accelerator)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _build_loss(name: str) -> torch.nn.Module:
    from retrieval.losses import LOSSES

    return LOSSES[name]()


def _save_model(model: Any, directory: Path) -> None:
    """``model.save`` is atomic (temporary folder renamed into place)."""
    model.save(directory)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not show, unit="step", dynamic_ncols=True, leave=False)


__all__ = ["StepCallback", "TrainResult", "TrainingDivergedError", "train"]
