"""The default recipe decides by validation: heads first, then partial adaptation of the image tower.

:func:`train` (``retrieval.train.train``) runs up to two phases:

1. **heads**: the run as configured (:func:`~retrieval.train.loop.train_run` in ``out_dir``); with
   the default recipe the pretrained towers are locked and only the projection heads train on
   features computed once.
2. **adapt** (``TrainConfig.adapt_image_layers > 0``): training continues from the heads' best
   model with the image tower's last units unfrozen (EfficientNet-Lite: the head conv, then the
   stages before it; transformers towers: their last blocks), in ``out_dir/adapt/`` (a run folder
   of its own: checkpoints, ``best/``, metrics). The locked prefix's output is computed once
   (:mod:`retrieval.train.prefix`), the tower layers learn at ``adapt_lr_scale`` of the heads'
   rate, and the same validation-decided schedule ends it. Its model is kept only when its best
   validation ``select_metric`` beats the heads' best; then it replaces ``out_dir/best/`` (the heads'
   best model stays in ``out_dir/heads-best/``).

The phase runs only where it can help and be judged: the heads phase ended normally (not
interrupted), with validation, on a pretrained image tower that was locked and splits into a
locked prefix and a trained suffix, and the time budget (``time_budget``, if any) leaves room for
at least :data:`MIN_EPOCHS` of its epochs (measured on one step before starting). Every decision is
logged, written to ``out_dir/adaptation.json`` and returned in ``TrainResult.phases``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from retrieval.config import TrainConfig
from retrieval.io import atomic_write_json, staged_directory
from retrieval.train.loop import StepCallback, train_run
from retrieval.train.result import TrainResult
from retrieval.train.setup import check_config, effective_config, find_resume

logger = logging.getLogger(__name__)

__all__ = ["ADAPT_DIR", "HEADS_BEST", "MIN_EPOCHS", "RECORD_FILE", "train"]

ADAPT_DIR = "adapt"  # the adaptation phase's run folder, inside the run's
RECORD_FILE = "adaptation.json"  # what was tried and decided, in the run folder
HEADS_BEST = "heads-best"  # where the heads phase's best model stays when adaptation replaced best/
MIN_EPOCHS = 3  # the adaptation phase starts only when the time budget leaves room for this many epochs


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: Any = None,
    callback: StepCallback | None = None,
) -> TrainResult:
    """Train a :class:`~retrieval.model.TwinEncoder` on ``config.train_data``; see :class:`TrainConfig`
    and the module docstring (heads, then partial adaptation of the image tower when it applies).

    ``resume=True`` continues the run in ``config.out_dir`` from its latest checkpoint (exactly: the
    same batches, augmentations and weights as an uninterrupted run), in whichever phase it
    stopped, or starts it when there is none. ``model`` trains that model in place (e.g. from
    ``TwinEncoder.from_pretrained``) instead of building ``config.model``; ``callback(record)`` runs
    after every optimizer step of either phase with its metrics record (``record["phase"]`` names
    the phase) and may return True to stop as if interrupted. Ctrl-C / SIGTERM stop at the next step
    boundary with a checkpoint (a second Ctrl-C aborts at once). A non-finite loss raises
    :class:`~retrieval.train.TrainingDivergedError` and leaves the last good checkpoint in place.
    Under ``torchrun`` every process calls this function; rank 0 writes the files.
    """
    check_config(config)
    config = effective_config(config, model)
    run_dir = Path(config.out_dir)
    record_path = run_dir / RECORD_FILE
    record = _read_record(record_path) if resume else None
    if record is not None and record.get("heads", {}).get("finished") and (run_dir / ADAPT_DIR).is_dir():
        find_resume(run_dir, True, config)  # the same run: a changed config is refused as for any resume
        same = record.get("adapt_settings") == _adapt_settings(config)
        if isinstance(record.get("result"), dict) and same:  # both phases finished: nothing is left to do
            logger.info("the run in %s is finished: %s", run_dir, record.get("decision", ""))
            done = _result_from(record["result"])
            phases = tuple(record.get("phases", ()))
            return dataclasses.replace(done, phases=phases, adaptation=record.get("decision", ""))
        first = _result_from(record["heads"]["result"])
        logger.info("the heads phase of %s finished before: resuming the adaptation phase", run_dir)
    else:
        if not resume:
            record_path.unlink(missing_ok=True)
        first = train_run(config, resume=resume, model=model, callback=_tagged(callback, "heads"))
    heads = _phase("heads", first, _describe(config, first))
    reason = _why_not(config, first, model)
    if reason is not None:
        return _finish(run_dir, first, [heads], f"no adaptation: {reason}", record_path, adapted=None)
    kept = {k: v for k, v in (_read_record(record_path) or {}).items() if k == "adapt_settings"}
    _write_record(record_path, {**kept, "heads": {**heads, "finished": True, "result": _result_dict(first)}})
    # an adaptation phase left unfinished resumes; a finished one (other settings now) starts anew
    unfinished = resume and record is not None and not isinstance(record.get("result"), dict)
    return _adapt(config, first, heads, unfinished, callback, record_path)


def _adapt_settings(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k.startswith("adapt_")}


def _tagged(callback: StepCallback | None, phase: str) -> StepCallback | None:
    if callback is None:
        return None

    def tagged(record: dict[str, Any]) -> Any:
        return callback({**record, "phase": phase})

    return tagged


def _why_not(config: TrainConfig, first: TrainResult, model: Any) -> str | None:
    """Why the adaptation phase does not run after ``first`` (None: it runs)."""
    if config.adapt_image_layers <= 0:
        return "adapt_image_layers=0"
    if first.status == "interrupted":
        return "the heads phase was interrupted"
    if first.best_metric is None:
        return "no validation to judge it by (give --val or keep val_fraction > 0)"
    if config.init_model or model is not None:
        return "the model was given (init_model or a model object): adapt it with model.unfreeze_image_layers"
    switches = config.model
    if not switches.image_locked or switches.unfreeze_image_layers or switches.shared:
        return "the image tower was not locked for the heads (it trained already)"
    return None


def _describe(config: TrainConfig, result: TrainResult) -> str:
    model = config.model
    image = "locked" if model.image_locked and not model.unfreeze_image_layers else "trained"
    return f"projection heads ({model.image_tower} {image}, {model.text_tower} {'locked' if model.lock_text else 'trained'})"


def _phase(name: str, result: TrainResult, trained: str) -> dict[str, Any]:
    """One phase's line of the record."""
    return {
        "phase": name,
        "trained": trained,
        "run_dir": str(result.run_dir),
        "status": result.status,
        "stop_reason": result.stop_reason,
        "epochs": result.epochs_completed,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "best_metric": result.best_metric,
        "best_metrics": dict(result.best_metrics),
    }


def _adapt(
    config: TrainConfig,
    first: TrainResult,
    heads: dict[str, Any],
    resume: bool,
    callback: StepCallback | None,
    record_path: Path,
) -> TrainResult:
    from retrieval.model import TwinEncoder
    from retrieval.train.frozen import feature_cache
    from retrieval.train.prefix import PrefixImageFeatures, recompute_batchnorm, tower_split
    from retrieval.train.setup import read_data

    run_dir = Path(config.out_dir)
    adapt_dir = run_dir / ADAPT_DIR
    layers = config.adapt_image_layers
    heads_best = run_dir / HEADS_BEST
    if heads_best.is_dir() and not (resume and (adapt_dir / "checkpoints").is_dir()):
        _replace_best(run_dir / "best", heads_best, keep=False)  # another adaptation starts from the heads
        shutil.rmtree(heads_best)
    device = _device(config)
    model = TwinEncoder.load(first.model_dir, device=device)
    units = len(model.image_tower.blocks())
    if layers > units:
        reason = f"the image tower has {units} units, adapt_image_layers={layers} asks for more"
        return _finish(run_dir, first, [heads], f"no adaptation: {reason}", record_path, adapted=None)
    model.set_training(unfreeze_image_layers=layers)
    split = tower_split(model)
    if split is None:
        reason = f"the image tower {type(model.image_tower).__name__} does not split into a locked prefix"
        return _finish(run_dir, first, [heads], f"no adaptation: {reason}", record_path, adapted=None)
    phase_config = config.replace(
        out_dir=str(adapt_dir),
        model=model.config.to_dict(),
        lr=config.adapt_lr or config.lr,
        tower_lr_scale=config.adapt_lr_scale,
        epochs=config.adapt_epochs,
        hard_negative_warmup=0,  # the heads are trained: mine from the first epoch
        adapt_image_layers=0,
        augment=False,
        time_budget=None,
    )
    trained = f"the image tower's last {layers} unit(s) (from part {split} of {units}) and the heads"
    settings = _adapt_settings(config)
    started = time.perf_counter()
    if config.time_budget is not None and config.time_budget <= first.seconds:
        reason = f"the heads used the time budget ({config.time_budget:.0f}s)"
        return _finish(run_dir, first, [heads], f"no adaptation: {reason}", record_path, adapted=None)
    prepared = None
    resuming = resume and (adapt_dir / "checkpoints").is_dir()
    saved = (_read_record(record_path) or {}).get("adapt_settings")
    if resuming and saved is not None and saved != settings:
        changed = "; ".join(
            f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v
        )
        raise ValueError(
            f"cannot resume: the adaptation phase in {adapt_dir} ran with other settings ({changed}). Resume "
            f"with the original settings, or delete {adapt_dir} to adapt the finished heads anew"
        )
    _write_record(record_path, {**(_read_record(record_path) or {}), "adapt_settings": settings})
    if not resuming:
        shutil.rmtree(adapt_dir, ignore_errors=True)  # a phase that never checkpointed starts over
        adapt_dir.mkdir(parents=True)  # from now on a resumed run continues here, not in the heads phase
        train_pairs, *_ = read_data(config, check_val_images=False)
        prepared = PrefixImageFeatures(
            model,
            train_pairs.images(),
            split,
            device,
            config.val_batch_size,
            feature_cache=feature_cache(config),
            runtime=config.runtime,
        )
        if config.adapt_batchnorm == "recompute":
            updated = recompute_batchnorm(model, prepared)
            logger.info("recomputed the statistics of %d BatchNorm layers on the training images", updated)
    budget = None
    if config.time_budget is not None:
        budget = config.time_budget - first.seconds - (time.perf_counter() - started)
        estimate = _epoch_estimate(model, prepared, config, first) if prepared is not None else 0.0
        if budget < MIN_EPOCHS * estimate or budget <= 0:
            reason = (
                f"the time budget leaves {max(budget, 0):.0f}s, {MIN_EPOCHS} epochs of adaptation would take "
                f"about {MIN_EPOCHS * estimate:.0f}s"
            )
            return _finish(run_dir, first, [heads], f"no adaptation: {reason}", record_path, adapted=None)
    logger.info("adapting %s (the heads reached %s %.4f)", trained, config.select_metric, first.best_metric)
    second = train_run(
        phase_config.replace(time_budget=budget),
        resume=resuming,
        model=model,
        callback=_tagged(callback, "adapt"),
        image_cache=prepared,
    )
    adapt = _phase("adapt", second, trained)
    adapt["prefix_seconds"] = round(time.perf_counter() - started - second.seconds, 3)
    kept = (
        second.status != "interrupted"
        and second.best_metric is not None
        and first.best_metric is not None
        and second.best_metric > first.best_metric
    )
    heads["kept"], adapt["kept"] = not kept, kept
    metric = config.select_metric
    if second.status == "interrupted":
        why = "the adaptation phase was interrupted: the heads' model is used"
    elif kept:
        why = f"adaptation kept: validation {metric} {first.best_metric:.4f} -> {second.best_metric:.4f}"
    else:
        best = second.best_metric if second.best_metric is not None else float("nan")
        why = f"adaptation not kept: validation {metric} {best:.4f}, the heads alone {first.best_metric:.4f}"
    if kept:
        _replace_best(run_dir / "best", second.model_dir)
    return _finish(
        run_dir, first, [heads, adapt], why, record_path, adapted=second if kept else None, last=second
    )


def _device(config: TrainConfig) -> torch.device:
    from retrieval.encoding import pick_device

    return pick_device(config.device)


def _epoch_estimate(model: Any, prepared: Any, config: TrainConfig, first: TrainResult) -> float:
    """Seconds one adaptation epoch takes: two timed optimizer-free steps (forward and backward of the
    suffix and heads on a batch of cached rows), times the steps of an epoch, plus a validation as
    long as the heads phase's share of it."""
    keys = list(prepared.index)[: config.batch_size]
    if not keys:
        return 0.0
    model.train()
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        emb = prepared(model, keys)  # [B, D]
        emb.sum().backward()
        timings.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    steps = first.steps / max(1, first.epochs_completed) if first.epochs_completed else 1
    return min(timings) * steps


def _replace_best(best: Path, chosen: Path, keep: bool = True) -> None:
    """Make ``best`` (the run's ``best/``) a copy of the chosen model folder, atomically; with ``keep``
    the heads phase's best model is copied to ``heads-best/`` beside it first."""
    kept = best.with_name(HEADS_BEST)
    if keep and best.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(best, kept)
    with staged_directory(best) as tmp:
        for item in Path(chosen).iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)


def _finish(
    run_dir: Path,
    first: TrainResult,
    phases: list[dict[str, Any]],
    why: str,
    record_path: Path,
    *,
    adapted: TrainResult | None,
    last: TrainResult | None = None,
) -> TrainResult:
    """The run's result (the chosen phase's model and validation), after logging and recording the
    decision."""
    logger.info("%s", why)
    phases = [dict(p) for p in phases]
    phases[0].setdefault("kept", adapted is None)
    chosen = adapted if adapted is not None else first
    seconds = first.seconds + (last.seconds if last is not None else 0.0)
    model_dir = run_dir / "best" if adapted is not None else first.model_dir
    stopped = last if last is not None and last.status == "interrupted" else chosen
    result = dataclasses.replace(
        chosen,
        status=stopped.status,
        stop_reason=stopped.stop_reason,
        checkpoint=(last or first).checkpoint,
        run_dir=run_dir,
        model_dir=model_dir,
        steps=first.steps + (last.steps if last is not None else 0),
        epochs_completed=first.epochs_completed + (last.epochs_completed if last is not None else 0),
        seconds=seconds,
        skipped=first.skipped,
        phases=tuple(phases),
        adaptation=why,
    )
    heads = {**phases[0], "finished": True, "result": _result_dict(first)}
    record = {**(_read_record(record_path) or {}), "decision": why, "phases": phases, "heads": heads}
    record.pop("result", None)
    if result.status != "interrupted" and len(phases) > 1:  # resuming the finished run returns this
        record["result"] = _result_dict(result)
    if first.status != "interrupted":
        _write_record(record_path, record)
    return result


# ----------------------------------------------------------------------------- the record
def _write_record(path: Path, record: dict[str, Any]) -> None:
    if path.parent.is_dir():
        atomic_write_json(path, record, indent=2, sort_keys=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_PATHS = ("run_dir", "model_dir", "metrics_path", "checkpoint")


def _result_dict(result: TrainResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    for name in _PATHS:
        data[name] = None if data[name] is None else str(data[name])
    data.pop("phases", None)
    data.pop("adaptation", None)
    return data


def _result_from(data: dict[str, Any]) -> TrainResult:
    values = dict(data)
    for name in _PATHS:
        values[name] = None if values.get(name) is None else Path(values[name])
    names = {f.name for f in dataclasses.fields(TrainResult)}
    return TrainResult(**{k: v for k, v in values.items() if k in names})
