"""The training loop end to end on a tiny model: files, determinism, exact resume, interruption, NaN."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retrieval.model import TwinEncoder, build_model
from retrieval.train import TrainingDivergedError, train
from retrieval.train.checkpoint import latest_checkpoint


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_train_writes_models_metrics_plots_and_checkpoints(config):
    result = train(config)
    run = result.run_dir
    assert result.status == "completed"
    assert result.steps == 8 and result.epochs_completed == 2  # 36 pairs // 8 = 4 steps per epoch
    assert result.model_dir == run / "best"
    model = TwinEncoder.load(result.model_dir, device="cpu")
    assert model.encode_texts(["a red circle"]).shape == (1, 16)
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "loss.png").stat().st_size > 0 and (run / "recall.png").stat().st_size > 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    val_records = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert len(val_records) == 2
    for key in ("t2i/R@1", "t2i/R@5", "t2i/R@10", "i2t/R@1", "i2t/R@5", "i2t/R@10", "mean_recall"):
        assert 0.0 <= val_records[-1][key] <= 1.0
    assert result.best_metric == max(r["mean_recall"] for r in val_records)
    assert train_records[0]["lr"] == pytest.approx(config.lr / 2)  # warmup step 1 of 2
    assert all(r["pairs"] == 8 and r["pairs_per_s"] > 0 for r in train_records)
    latest = latest_checkpoint(run / "checkpoints")
    assert latest is not None and latest.name == "step-00000008"
    assert len(list((run / "checkpoints").glob("step-*"))) <= config.keep_checkpoints
    TwinEncoder.load(latest / "model", device="cpu")  # checkpoints hold loadable models
    assert json.loads((run / "config.json").read_text())["lr"] == config.lr


def test_same_seed_gives_identical_weights(config, tmp_path):
    config = config.replace(val_data=None, epochs=1)
    a = train(config.replace(out_dir=str(tmp_path / "a")))
    b = train(config.replace(out_dir=str(tmp_path / "b")))
    _assert_same_weights(a.model_dir, b.model_dir)
    c = train(config.replace(out_dir=str(tmp_path / "c"), seed=1))
    assert not torch.equal(_weights(a.model_dir)["logit_scale"], _weights(c.model_dir)["logit_scale"]) or any(
        not torch.equal(x, y) for x, y in zip(_weights(a.model_dir).values(), _weights(c.model_dir).values())
    )


def test_worker_processes_do_not_change_the_result(config, tmp_path):
    # random crops: seeded per item; two epochs: the run's workers serve the second epoch's keys too
    config = config.replace(val_data=None, epochs=2, checkpoint_every=0)
    inline = train(config.replace(out_dir=str(tmp_path / "inline"), num_workers=0))
    workers = train(config.replace(out_dir=str(tmp_path / "workers"), num_workers=2))
    _assert_same_weights(inline.model_dir, workers.model_dir)
    auto = train(config.replace(out_dir=str(tmp_path / "auto")))  # None: workers, as images are decoded
    _assert_same_weights(inline.model_dir, auto.model_dir)


def test_how_many_data_workers_a_run_gets(config):
    from retrieval.data import collate_pairs
    from retrieval.train.frozen import collate_refs, data_workers

    assert config.num_workers is None
    assert data_workers(config, collate_pairs) == min(2, os.cpu_count() or 1)  # images decoded per step
    assert data_workers(config, collate_refs) == 0  # locked tower's features cached: nothing to decode
    assert data_workers(config.replace(num_workers=0), collate_pairs) == 0
    with pytest.raises(ValueError, match="num_workers must be >= 0 or None"):
        config.replace(num_workers=-1)


@pytest.mark.parametrize(
    ("stop_at", "accum_features"), [(3, False), (4, True)], ids=["mid-epoch", "epoch-end-feature-accum"]
)
def test_resume_reaches_the_same_weights(config, tmp_path, stop_at, accum_features):
    # dropout, weighted sampling and random crops all draw randomness; accumulation spans steps
    config = config.replace(
        model=config.model.replace(dropout=0.2),
        sample_weight_column="weight",
        grad_accum=2,
        accum_features=accum_features,
        batch_size=4,
        epochs=2,
        checkpoint_every=0,
        early_stopping_patience=None,
    )
    whole = train(config.replace(out_dir=str(tmp_path / "whole")))
    stopped = train(config, callback=lambda record: record["step"] == stop_at)
    assert stopped.status == "interrupted" and stopped.steps == stop_at
    assert not (stopped.run_dir / "final").exists()
    resumed = train(config, resume=True)
    assert resumed.status == "completed" and resumed.steps == whole.steps
    _assert_same_weights(whole.run_dir / "final", resumed.run_dir / "final")
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [
        s
        for s, line in zip(steps, (resumed.run_dir / "metrics.jsonl").read_text().splitlines())
        if '"train"' in line
    ]
    assert train_steps == list(range(1, whole.steps + 1))  # no step logged twice


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_at_a_step_boundary_with_a_checkpoint(config, signum):
    before = signal.getsignal(signum)

    def interrupt(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signum)

    result = train(config, callback=interrupt)
    assert result.status == "interrupted" and result.steps == 2
    assert latest_checkpoint(result.run_dir / "checkpoints").name == "step-00000002"
    assert result.model_dir == result.run_dir / "checkpoints" / "step-00000002" / "model"
    assert signal.getsignal(signum) is before  # handler restored


@pytest.mark.parametrize("cached", [False, True], ids=["decoded", "locked-image-cache"])
def test_broken_images_are_skipped_and_counted(config, dataset, tmp_path, cached):
    if cached:
        config = config.replace(model=config.model.replace(lock_image=True), augment=False)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "val"):
        lines = dataset[name].read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        for row in rows:
            row["image"] = str(dataset[name].parent / row["image"])
        (data / "broken.png").write_bytes(b"\x89PNG not really")
        rows += [
            {"image": "broken.png", "caption": "a broken picture"},
            {"image": rows[0]["image"], "caption": ""},
        ]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config.replace(
        train_data=str(data / "train.jsonl"), val_data=str(data / "val.jsonl"), batch_size=37
    )
    result = train(config.replace(epochs=1))  # 37 = every pair in one batch, the broken one included
    assert result.status == "completed" and result.steps == 1
    assert result.skipped == 2  # the empty caption (when read) and the broken image (in its batch)
    records = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert records[0]["pairs"] == 36 and records[0]["skipped"] == 1
    assert records[-1]["kind"] == "val" and records[-1]["t2i/n_queries"] == 20


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(config):
    model = build_model(config.model, captions=["a red circle"], device="cpu")

    def poison(record):
        if record["step"] == 3:
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 4.*step-00000002.*lr"):
        train(config.replace(val_data=None, checkpoint_every=2), model=model, callback=poison)
    good = latest_checkpoint(Path(config.out_dir) / "checkpoints")
    assert good.name == "step-00000002"
    assert torch.isfinite(_weights(good / "model")["logit_scale"]).all()


def test_existing_run_needs_resume_and_the_same_settings(config):
    config = config.replace(loss="siglip")  # the run records use_bias=True; resuming must still match
    train(config.replace(max_steps=1, val_data=None))
    with pytest.raises(FileExistsError, match="resume"):
        train(config.replace(max_steps=1, val_data=None))
    with pytest.raises(ValueError, match=r"cannot resume.*lr"):
        train(config.replace(max_steps=2, val_data=None, lr=0.1), resume=True)
    result = train(config.replace(max_steps=2, val_data=None), resume=True)
    assert result.steps == 2 and result.status == "max_steps"


def test_early_stopping_when_validation_stalls(config):
    # with the cosine schedule a plateau stops at once (the plateau schedule decays first)
    config = config.replace(lr=1e-12, warmup_steps=0, epochs=6, early_stopping_patience=2, schedule="cosine")
    result = train(config)
    assert result.status == "early_stopped"
    assert result.epochs_completed == 3  # best at epoch 1, no gain at 2 and 3


@pytest.mark.parametrize(
    ("loss", "optimizer"),
    [("clip", "adam"), ("siglip", "sgd"), ("contrastive", "adagrad"), ("triplet", "rmsprop")],
)
def test_every_loss_and_optimizer_trains(config, loss, optimizer):
    result = train(config.replace(loss=loss, optimizer=optimizer, max_steps=2, val_data=None))
    assert result.status == "max_steps" and result.steps == 2
    model = TwinEncoder.load(result.model_dir, device="cpu")
    assert (model.logit_bias is not None) == (loss == "siglip")


def test_bf16_autocast_on_cpu(config):
    result = train(config.replace(precision="bf16", max_steps=2, val_data=None))
    assert result.steps == 2 and result.last_loss == result.last_loss  # finite, not NaN


def test_time_budget_stops_with_a_checkpoint(config):
    result = train(config.replace(time_budget=1e-9, val_data=None))
    assert result.status == "time_budget" and result.steps == 1
    assert result.checkpoint is not None and (result.run_dir / "final").is_dir()


def test_user_errors_are_clear(config, tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'infonce'"):
        train(config.replace(loss="infonce"))
    with pytest.raises(ValueError, match=r"unknown TrainConfig.optimizer 'lbfgs'.*adamw"):
        config.replace(optimizer="lbfgs")
    with pytest.raises(ValueError, match="train_data is empty"):
        train(config.replace(train_data=""))
    with pytest.raises(ValueError, match=r"fp16.*CUDA"):
        train(config.replace(precision="fp16"))
    with pytest.raises(ValueError, match="no metadata field 'nope'"):
        train(config.replace(sample_weight_column="nope"))


@pytest.mark.parametrize("side", ["text", "image"])
def test_a_locked_tower_is_encoded_once_and_matches_the_uncached_run(config, tmp_path, side):
    lock = {"lock_text": True} if side == "text" else {"lock_image": True}
    # the shared feature cache off: the tower itself must run, once (its reuse is tested in tests/encoding)
    config = config.replace(
        model=config.model.replace(**lock), val_data=None, epochs=2, augment=False, feature_cache=False
    )
    torch.manual_seed(0)
    build_model(config.model, captions=["a red circle", "a blue square"], device="cpu").save(
        tmp_path / "init"
    )
    calls = []
    model = TwinEncoder.load(tmp_path / "init", device="cpu")
    tower = model.text_tower if side == "text" else model.image_tower
    tower.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    cached = train(config.replace(out_dir=str(tmp_path / "cached")), model=model)
    # the 20 unique captions / 32 unique images once, in batches of val_batch_size, before step 1
    assert calls == ([16, 4] if side == "text" else [16, 16])
    plain = train(
        config.replace(out_dir=str(tmp_path / "plain"), cache_locked_features=False),
        model=TwinEncoder.load(tmp_path / "init", device="cpu"),
    )
    a, b = _weights(cached.model_dir), _weights(plain.model_dir)
    assert any(k.startswith(f"{side}_tower.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("loss", ["clip", "triplet"])
def test_feature_accumulation_equals_one_big_batch(config, tmp_path, loss):
    # 2 micro-batches of 4 contrasted against the whole step = one batch of 8 (same pairs per step)
    base = config.replace(
        loss=loss, val_data=None, max_steps=2, optimizer="sgd", warmup_steps=0, checkpoint_every=0
    )
    big = train(base.replace(out_dir=str(tmp_path / "big"), batch_size=8))
    accum = train(
        base.replace(out_dir=str(tmp_path / "accum"), batch_size=4, grad_accum=2, accum_features=True)
    )
    plain = train(base.replace(out_dir=str(tmp_path / "plain"), batch_size=4, grad_accum=2))
    a, b, c = _weights(big.model_dir), _weights(accum.model_dir), _weights(plain.model_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(
        not torch.allclose(a[k], c[k], rtol=1e-4, atol=1e-6) for k in a
    )  # per-micro-batch negatives differ
    assert big.last_loss == pytest.approx(accum.last_loss, rel=1e-4)


def test_validation_reuses_locked_tower_outputs(config, dataset):
    from retrieval.data import read_pairs
    from retrieval.train.setup import validate

    config = config.replace(model=config.model.replace(lock_text=True, lock_image=True))
    model = build_model(config.model, captions=["a red circle"], device="cpu")
    calls = []
    model.text_tower.register_forward_hook(lambda module, args, out: calls.append("text"))
    model.image_tower.register_forward_hook(lambda module, args, out: calls.append("image"))
    pairs = read_pairs(str(dataset["val"]))
    caches: dict = {}
    first = validate(model, pairs, config, torch.device("cpu"), caches)
    n_calls = len(calls)
    second = validate(model, pairs, config, torch.device("cpu"), caches)
    assert len(calls) == n_calls  # the towers did not run again
    plain = validate(model, pairs, config, torch.device("cpu"))
    for key, value in plain.items():
        assert first[key] == pytest.approx(value, abs=1e-6) and second[key] == first[key], key


def test_the_default_recipe_trains_only_the_heads_on_features_computed_once(config, monkeypatch):
    """TrainConfig()'s model: both pretrained towers locked, each image and caption through its tower
    once (not per epoch, validation or mining); the image tower's weights never change in the heads
    phase (the adaptation phase after it: tests/train/test_adaptation.py)."""
    from retrieval.config import RECIPE_MODEL, TrainConfig
    from retrieval.towers.efficientnet import EfficientNetLiteImageTower

    assert TrainConfig().model == RECIPE_MODEL and TrainConfig().augment is None
    calls = []
    original = EfficientNetLiteImageTower.forward

    def counting(self, pixel_values):
        calls.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(EfficientNetLiteImageTower, "forward", counting)
    run = config.replace(
        model=RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64"),
        lr=TrainConfig().lr,
        weight_decay=TrainConfig().weight_decay,
        augment=None,
        hard_negatives=True,
        hard_negative_warmup=1,
        hard_negative_every=1,
        hard_negative_neighbours=4,
        epochs=3,
        runtime="torch",  # the torch tower itself counts its calls (ONNX Runtime and the cache: tests/encoding)
        feature_cache=False,
        adapt_image_layers=0,
    )
    start = build_model(run.model, device="cpu")  # the towers' weights before training
    result = train(run)
    assert result.status == "completed"
    n_train, n_val = 32, 16  # unique images of the training and validation manifests
    assert sum(calls) == n_train + n_val  # once each: not per epoch, per validation or per mining
    trained = TwinEncoder.load(result.model_dir)
    for name, tensor in start.image_tower.state_dict().items():
        assert torch.equal(tensor, trained.image_tower.state_dict()[name]), name
