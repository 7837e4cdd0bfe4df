"""``retrieval train DATA --out DIR [--init MODEL] [--val DATA] [--epochs N] [--time-budget S] [--config JSON]
[--resume] [KEY=VALUE ...]``."""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Any

from retrieval.cli.checks import require_file, require_input, require_model
from retrieval.cli.data_options import add_data_options, read_options
from retrieval.cli.errors import KEYWORD_ALIASES
from retrieval.cli.options import MODEL_HELP, config_option, given
from retrieval.cli.parsing import UsageError, split_overrides
from retrieval.config import TrainConfig

EPILOG = """\
overrides: KEY=VALUE pairs set any TrainConfig field, nested model fields with a dot; values are
JSON when they parse as JSON, else strings. Give them anywhere on the line (or with --set):
  retrieval train pairs.jsonl --out runs/a lr=3e-4 model.embed_dim=128 --val val.jsonl
  retrieval train pairs.jsonl --out runs/a --set loss=siglip --set model.text_tower=transformer
Fine-tune a pretrained model: --init MODEL (a toolkit or transformers CLIP/SigLIP folder, or a hub id
org/name[@revision]); then model.* overrides set only how each tower trains, e.g.
  retrieval train pairs.jsonl model.lock_text=false model.unfreeze_image_layers=2 lr=1e-5
      --init openai/clip-vit-base-patch32 --out runs/ft
Precedence: TrainConfig defaults < --config JSON < options < overrides. Ctrl-C stops after the current
step with a checkpoint; --resume continues from it exactly. Data-parallel on N processes (gloo on CPU,
nccl on GPUs): torchrun --nproc_per_node=N -m retrieval train DATA --out DIR ..."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train twin encoders on image-caption pairs (checkpoints, validation recall, resume)",
        description="Train a TwinEncoder on DATA and write checkpoints, best/ and final/ model folders, "
        "metrics.jsonl and loss/recall plots to --out. By default it validates after every epoch (on --val, "
        "else on a held-out share of DATA's images), decays the learning rate when validation recall "
        "plateaus and then stops (schedule=cosine epochs=N trains a fixed N epochs instead).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data", help="training pairs: manifest (.jsonl/.csv/.tsv/.parquet), image folder, .tar shard(s)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="TrainConfig overrides, anywhere on the line (see below)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, models, metrics)")
    p.add_argument(
        "--val",
        default=None,
        metavar="DATA",
        help="validation pairs (recall per epoch, best/, when to stop); default: a share of DATA's images",
    )
    p.add_argument(
        "--no-auto-val",
        action="store_true",
        help="without --val, do not hold out training images for validation (trains all epochs)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="start from this pretrained model (projections and temperature included): " + MODEL_HELP,
    )
    p.add_argument(
        "--config", default=None, metavar="JSON", help="a TrainConfig JSON file (e.g. a run's config.json)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument(
        "--set", action="append", default=[], dest="set_overrides", metavar="KEY=VALUE", help="an override"
    )
    option = functools.partial(config_option, p, TrainConfig)
    option("epochs", "--epochs", metavar="N", help="most passes over DATA (validation stops it earlier)")
    option(
        "time_budget", "--time-budget", metavar="S", help="seconds of training at most (then a checkpoint)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_options(p, val_split=True)  # each sets the TrainConfig field of the same name
    # library messages name these TrainConfig fields; on this command line they are flags
    p.set_defaults(
        func=run, **{KEYWORD_ALIASES: {"init_model": "--init", "val_data": "--val", "out_dir": "--out"}}
    )


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``base`` (a TrainConfig dict) with ``KEY=VALUE`` overrides applied; ``a.b=v`` sets a nested field."""
    result = json.loads(json.dumps(base))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. lr=3e-4 or model.embed_dim=128)")
        *parents, leaf = key.strip().split(".")
        target = result
        for name in parents:
            if not isinstance(target.get(name), dict):
                raise ValueError(
                    f"override {item!r}: {name!r} is not a nested config (e.g. model.embed_dim=128)"
                )
            target = target[name]
        target[leaf] = _parse_value(value)
    return result


def run(args: argparse.Namespace) -> int:
    from retrieval.cli import EXIT_INTERRUPTED, EXIT_OK
    from retrieval.train import train

    positionals, overrides = split_overrides([args.data, *args.overrides])
    if len(positionals) != 1:
        got = ", ".join(repr(p) for p in positionals) or "none"
        raise UsageError(f"give one DATA and KEY=VALUE overrides; received {len(positionals)} DATA ({got})")
    (train_data,) = positionals
    require_input(train_data, "training data", flag="DATA")
    if args.val is not None:
        require_input(args.val, "validation data", flag="--val")
    if args.config is not None:
        require_file(args.config, "TrainConfig JSON", flag="--config")
    if args.init is not None:
        require_model(args.init, flag="--init")
    base = TrainConfig.load(args.config) if args.config else TrainConfig()
    data = {**base.to_dict(), **given(args, TrainConfig)}
    data.update(train_data=train_data, out_dir=args.out)
    if args.val is not None:
        data["val_data"] = args.val
    if args.init is not None:
        data["init_model"] = args.init
    if args.no_auto_val:
        data["val_fraction"] = 0.0
    if args.no_progress:
        data["progress"] = False
    data.update(read_options(args))
    config = TrainConfig.from_dict(apply_overrides(data, [*overrides, *args.set_overrides]))
    result = train(config, resume=args.resume)  # a divergence is an error like any other: one line
    stopped = EXIT_INTERRUPTED if result.status == "interrupted" else EXIT_OK
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return stopped
    best = f", best {config.select_metric} {result.best_metric:.4f}" if result.best_metric is not None else ""
    print(
        f"{result.status}: {result.steps} steps, {result.epochs_completed} epochs, "
        f"{result.pairs_per_second:.0f} pairs/s{best}\nwhy: {result.stop_reason}\n"
        + (f"{result.adaptation}\n" if result.adaptation else "")
        + f"model: {result.model_dir}\nrun: {result.run_dir}"
    )
    return stopped
