"""What a run needs before its first step: checked config, data, model, precision, signal handling,
and the per-epoch validation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retrieval import encoding
from retrieval.config import TrainConfig
from retrieval.pretrained import resolve_model
from retrieval.train.checkpoint import latest_checkpoint
from retrieval.train.distributed import DistContext, barrier, broadcast_module
from retrieval.train.optim import check_optimizer_name
from retrieval.train.valsplit import split_pairs

logger = logging.getLogger(__name__)

PRECISIONS = TrainConfig.CHOICES["precision"]
# fields a resumed run may change; every other difference is an error
RESUMABLE_CHANGES = frozenset(
    {
        "train_data",
        "val_data",
        "out_dir",
        "epochs",
        "max_steps",
        "time_budget",
        "num_workers",
        "runtime",  # locked towers' features agree across runtimes within the export check's tolerance
        "feature_cache",
        "checkpoint_every",
        "keep_checkpoints",
        "early_stopping_patience",
        "min_improvement",
        "val_batch_size",
        "device",
        "progress",
        # what happens after the heads phase (retrieval.train.adaptation): another adaptation may be
        # tried on finished heads; the adaptation phase's own folder checks its settings
        "adapt_image_layers",
        "adapt_lr_scale",
        "adapt_lr",
        "adapt_epochs",
        "adapt_batchnorm",
    }
)


def check_config(config: TrainConfig) -> None:
    """Reject settings that cannot work, before anything is read or built."""
    from retrieval.losses import LOSSES

    if not isinstance(config, TrainConfig):
        raise ValueError(f"train expects a TrainConfig, received {type(config).__name__}")
    if not config.train_data:
        raise ValueError(
            "TrainConfig.train_data is empty: give the training manifest, image folder or shards"
        )
    if not config.out_dir:
        raise ValueError("TrainConfig.out_dir is empty: give a folder for checkpoints, models and metrics")
    LOSSES[config.loss]  # unknown name -> ValueError listing the choices
    check_optimizer_name(config.optimizer)


def check_resume_config(saved: TrainConfig, given: TrainConfig) -> None:
    """A resumed run must train the same thing; only the fields in ``RESUMABLE_CHANGES`` may differ."""
    old, new = saved.to_dict(), given.to_dict()
    changed = sorted(k for k in old if k not in RESUMABLE_CHANGES and old[k] != new.get(k))
    if changed:
        details = "; ".join(f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume: the config differs from the run's config.json in {details}. "
            "Resume with the original settings, or start a new run in another out_dir"
        )


def find_resume(run_dir: Path, resume: bool, config: TrainConfig) -> Path | None:
    """The checkpoint a run in ``run_dir`` continues from: the latest one with ``resume`` (``None``
    when there is none yet), else ``None`` after checking that ``run_dir`` holds no earlier run."""
    ckpt_root = run_dir / "checkpoints"
    latest = latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    if not resume:
        if latest is not None or (run_dir / "metrics.jsonl").exists():
            raise FileExistsError(
                f"{run_dir} already holds a training run: pass resume=True (--resume) to continue it, "
                "or choose a new out_dir"
            )
        return None
    if latest is None:
        logger.info("no checkpoint in %s yet: starting a new run", ckpt_root)
        return None
    saved = run_dir / "config.json"
    if saved.is_file():
        check_resume_config(_saved_config(saved), config)
    return latest


def _saved_config(path: Path) -> TrainConfig:
    """A run's config.json; a run saved before ``schedule`` existed used the cosine schedule."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("schedule", "cosine")
    return TrainConfig.from_dict(data)


def read_data(config: TrainConfig, check_val_images: bool = True) -> tuple[Any, Any, int, dict[str, Any]]:
    """``(train PairSet, val PairSet or None, skipped count, validation record)``; logs what was skipped.

    Without ``val_data``, a deterministic share (``val_fraction``) of the training images is held
    out for validation (:mod:`retrieval.train.valsplit`; all captions of an image on one side).
    The validation record says where the validation pairs came from (``"given"``, ``"auto"`` with
    the split's sizes, or ``"none"``); the loop writes it to the run's ``validation.json``.

    Training images are decoded lazily (a broken one is dropped from its batch and counted);
    validation images are decoded once up front (``check_val_images``) and pairs whose image is
    broken are left out, so validation never fails at the end of an epoch.
    """
    from retrieval.data import read_corpus
    from retrieval.data.records import describe_skips

    kwargs = {
        "image_column": config.image_column,
        "caption_column": config.caption_column,
        "id_column": config.id_column,
        "image_root": config.image_root,
    }
    # A corpus of images without captions (or captions alone) cannot train: a clear error says so.
    train_pairs = read_corpus(config.train_data, split=config.split, **kwargs).require_pairs("training")
    skipped = len(train_pairs.skipped)
    if skipped:
        logger.warning("training data %s: %s", config.train_data, describe_skips(train_pairs.skipped))
    val_pairs = None
    record: dict[str, Any] = {"source": "none"}
    if not config.val_data:
        train_pairs, val_pairs, split = split_pairs(train_pairs, config.val_fraction)
        record = split.to_dict() if val_pairs is not None else {"source": "none", "reason": split.reason}
        if val_pairs is not None:
            logger.info(
                "no validation data given: holding out %d of the training images (%d pairs; %s) "
                "for validation (val_fraction=0 turns this off)",
                split.images,
                split.pairs,
                split.reason,
            )
            if check_val_images:
                val_pairs = _decodable(val_pairs)
        else:
            logger.info("no validation: %s", split.reason)
    if config.val_data:
        record = {"source": "given", "val_data": str(config.val_data)}
        val_pairs = read_corpus(config.val_data, split=config.val_split, **kwargs).require_pairs("validation")
        if check_val_images:
            val_pairs = _decodable(val_pairs)
            if len(val_pairs) == 0:
                raise ValueError(f"no validation pair in {config.val_data} has a readable image")
        if val_pairs.skipped:
            logger.warning("validation data %s: %s", config.val_data, describe_skips(val_pairs.skipped))
    if config.tags_column:
        from retrieval.train.tags import with_tags

        train_pairs, added = with_tags(train_pairs, config.tags_column)
        logger.info(
            "tags (%s): %d training pairs added, one per distinct tag of an image", config.tags_column, added
        )
    logger.info(
        "%d training pairs (%d images)%s",
        len(train_pairs),
        len(train_pairs.images()),
        f", {len(val_pairs)} validation pairs" if val_pairs is not None else "",
    )
    if val_pairs is not None:
        record.update(images=len(val_pairs.images()), pairs=len(val_pairs))
    return train_pairs, val_pairs, skipped, record


def _decodable(pairs: Any) -> Any:
    """``pairs`` without the pairs whose image cannot be decoded (recorded in ``skipped``)."""
    from retrieval.data import ImageDecodeError, PairSet, load_image

    broken: dict[str, str] = {}
    for ref in pairs.images():
        try:
            load_image(ref)
        except (ImageDecodeError, OSError, ValueError) as exc:
            broken[ref] = str(exc)
    if not broken:
        return pairs
    kept = [p for p in pairs.pairs if p.image not in broken]
    return PairSet(kept, [*pairs.skipped, *broken.items()])


def effective_config(config: TrainConfig, model: Any) -> TrainConfig:
    """The config the run records: the sigmoid loss learns a logit bias, so a model built for it
    gets ``use_bias=True`` (a model passed in or ``init_model`` is used as it is)."""
    if config.init_model:
        if model is not None:
            raise ValueError(
                f"train got a model and TrainConfig.init_model={config.init_model!r}: give one of them"
            )
        check_init_config(config)
        return config
    if config.loss == "siglip" and model is None and not config.model.use_bias:
        logger.info("the siglip loss learns a logit bias: building the model with use_bias=True")
        return config.replace(model=config.model.replace(use_bias=True))
    return config


def check_init_config(config: TrainConfig) -> None:
    """With ``init_model`` the architecture is the pretrained model's: ``config.model`` may only change
    the training switches (:data:`retrieval.model.TRAINING_FIELDS`)."""
    from retrieval.config import RECIPE_MODEL, ModelConfig
    from retrieval.model import TRAINING_FIELDS

    defaults = (ModelConfig().to_dict(), RECIPE_MODEL.to_dict())  # what a user who set nothing has
    given = config.model.to_dict()
    ignored = sorted(
        k for k in given if k not in TRAINING_FIELDS and all(given[k] != d.get(k) for d in defaults)
    )
    if ignored:
        details = ", ".join(f"model.{k}={given[k]!r}" for k in ignored)
        raise ValueError(
            f"init_model {config.init_model!r} fixes the architecture, so {details} cannot apply: drop "
            f"them (with init_model, model.* sets only {', '.join(TRAINING_FIELDS)})"
        )


def initial_model(config: TrainConfig, device: Any) -> Any:
    """``config.init_model`` loaded on ``device`` (:func:`retrieval.model.load_model`: projections,
    temperature and bias included) with the training switches of ``config.model`` applied."""
    from retrieval.model import TRAINING_FIELDS, load_model

    model = load_model(str(config.init_model), device=device)
    switches = {k: getattr(config.model, k) for k in TRAINING_FIELDS}
    locked = [name for name in ("image", "text") if switches[f"lock_{name}"]]
    if locked:
        logger.info(
            "fine-tuning %s with the %s tower(s) locked (model.lock_%s=false trains them too)",
            config.init_model,
            " and ".join(locked),
            locked[0],
        )
    return model.set_training(**switches)


def prepare_model(
    config: TrainConfig,
    ctx: DistContext,
    model: Any,
    train_pairs: Any,
    resume_from: Path | None,
    ckpt_root: Path,
) -> tuple[Any, TrainConfig]:
    """The model to train on ``ctx.device`` and the config.

    Priority: the checkpoint being resumed, then a model passed in, then ``config.init_model``
    (:func:`initial_model`), then ``build_model(config.model)`` with the tokenizer trained on the
    training captions (and without the colour histogram when the training images are greyscale:
    :mod:`retrieval.train.colour`). Every rank ends with rank 0's weights.
    """
    from retrieval.model import TwinEncoder, build_model

    torch.manual_seed(config.seed)
    if resume_from is not None:
        model = TwinEncoder.load(resume_from / "model", device=ctx.device)
    elif model is None and config.init_model:
        if ctx.enabled:  # rank 0 fetches a hub model into the cache first; then every rank reads it
            if ctx.is_main:
                resolve_model(config.init_model)
            barrier(ctx)
        model = initial_model(config, ctx.device)
    elif model is None:
        from retrieval.train.colour import model_config_for_images

        if ctx.enabled:
            # The tokenizer is trained on rank 0 only, then every rank loads the same folder.
            init_dir = ckpt_root / "init"
            if ctx.is_main:
                model_config = model_config_for_images(config.model, train_pairs.images())
                build_model(model_config, captions=train_pairs.captions(), device="cpu").save(init_dir)
            barrier(ctx)
            model = TwinEncoder.load(init_dir, device=ctx.device)
        else:
            model_config = model_config_for_images(config.model, train_pairs.images())
            model = build_model(model_config, captions=train_pairs.captions(), device=ctx.device)
    else:
        model = model.to(ctx.device)
    if config.loss == "siglip" and getattr(model, "logit_bias", None) is None:
        logger.warning(
            "the siglip loss without a logit bias (model built with use_bias=False): bias fixed at 0"
        )
    broadcast_module(model, ctx)
    return model, config


@dataclasses.dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision policy: autocast dtype (None: fp32) and whether to scale the loss."""

    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``"auto"``: bf16 autocast on CUDA GPUs that support it, else fp16 with loss scaling; fp32 on CPU.
    ``"bf16"`` also works on CPU (autocast); ``"fp16"`` needs CUDA."""
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return Precision(None, False)
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp32":
        return Precision(None, False)
    if name == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision 'bf16' is not supported by this GPU: use 'fp16' or 'auto'")
        return Precision(torch.bfloat16, False)
    if name == "fp16":
        if not cuda:
            raise ValueError("precision 'fp16' needs a CUDA device: use 'bf16' or 'fp32' on CPU")
        return Precision(torch.float16, True)
    raise ValueError(f"unknown precision {name!r}; choose one of {list(PRECISIONS)}")


def validate(
    model: Any, pairs: Any, config: TrainConfig, device: torch.device, caches: dict[str, Any] | None = None
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on validation ``pairs`` (t2i/i2t R@1/5/10, MRR, ...) plus
    ``"mean_recall"``, the mean of the six R@K (the "rsum" of VSE papers divided by 6).

    With ``caches`` (a dict kept between calls) and ``config.cache_locked_features``, the outputs of
    fully locked towers on the validation set are computed at the first call and reused: later
    validations only run the projection heads on that side (and a partly trained image tower's
    suffix on its cached locked prefix).
    """
    from retrieval.evaluate import retrieval_metrics_from_embeddings
    from retrieval.train.frozen import (
        FrozenImageFeatures,
        FrozenTextFeatures,
        feature_cache,
        image_tower_is_frozen,
        text_tower_is_frozen,
    )
    from retrieval.train.prefix import PrefixImageFeatures, planned_split, tower_split

    use_cache = caches is not None and config.cache_locked_features
    batch = config.val_batch_size
    images, captions = pairs.images(), pairs.captions()
    split = tower_split(model)
    with encoding.inference(model, device):  # eval mode for the cached heads too; restored after
        if use_cache and split is not None:
            key = f"image_prefix_{split}"
            if key not in caches:
                caches[key] = PrefixImageFeatures(
                    model,
                    images,
                    split,
                    device,
                    batch,
                    feature_cache=feature_cache(config),
                    runtime=config.runtime,
                )
            image_emb = _project(caches[key], model, images, batch)  # [I, D]
        elif use_cache and image_tower_is_frozen(model):
            if "image" not in caches:
                caches["image"] = FrozenImageFeatures(
                    model,
                    images,
                    device,
                    batch,
                    runtime=config.runtime,
                    feature_cache=feature_cache(config),
                    split=planned_split(config, model, len(set(images))),
                )
            image_emb = _project(caches["image"], model, images, batch)  # [I, D]
        else:
            image_emb = encoding.encode_images(
                model, images, batch_size=batch, device=device
            ).vectors  # [I, D]
        if use_cache and text_tower_is_frozen(model):
            if "text" not in caches:
                caches["text"] = FrozenTextFeatures(
                    model, captions, device, batch, runtime=config.runtime, feature_cache=feature_cache(config)
                )
            text_emb = _project(caches["text"], model, captions, batch)  # [T, D]
        else:
            text_emb = encoding.encode_texts(
                model, captions, batch_size=batch, device=device
            ).vectors  # [T, D]
    metrics = retrieval_metrics_from_embeddings(text_emb, image_emb, pairs.text_to_image(), ks=(1, 5, 10))
    recalls = [metrics[f"{d}/R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
    metrics["mean_recall"] = sum(recalls) / len(recalls)
    return {k: float(v) for k, v in metrics.items()}


def _project(cache: Any, model: Any, keys: Sequence[str], batch: int) -> torch.Tensor:
    with torch.no_grad():
        parts = [cache(model, keys[i : i + batch]) for i in range(0, len(keys), batch)]
    return torch.cat(parts).cpu()  # [N, D]


class StopSignals:
    """Context manager: the first Ctrl-C (SIGINT) or SIGTERM sets ``requested`` so the loop can stop
    at the next step boundary with a checkpoint; a second Ctrl-C raises ``KeyboardInterrupt`` at once.
    Outside the main thread it installs nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: stopping after this step with a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
