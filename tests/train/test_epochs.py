"""Training as long as it helps: the automatic validation split, the plateau schedule's formula,
stopping on a plateau with the best model kept, and exact resume across a plateau decision."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retrieval.data import Pair, PairSet
from retrieval.train import train
from retrieval.train.optim import decay_length, wsd_factor
from retrieval.train.state import LoopState
from retrieval.train.valsplit import VAL_MAX_IMAGES, VAL_MIN_IMAGES, held_out_count, split_pairs


def _pairs(n_images: int, root: str = "/data/a") -> PairSet:
    pairs = []
    for i in range(n_images):
        path = f"{root}/img-{i:05d}.png"
        for c in range(1 + i % 3):  # 1 to 3 captions per image
            pairs.append(Pair(image=path, caption=f"caption {c} of {i}", image_id=path))
    return PairSet(pairs, [])


# ------------------------------------------------------------------------- the split


def test_auto_split_is_deterministic_keeps_captions_together_and_ignores_the_folder():
    pairs = _pairs(1200)
    before = list(pairs.pairs)
    train_a, val_a, record = split_pairs(pairs, 0.1)
    assert pairs.pairs == before  # the input is not modified
    assert record.images == 120 and len(val_a.images()) == 120 and record.train_images == 1080
    val_ids = set(val_a.image_ids())
    assert not val_ids & set(train_a.image_ids())  # no image on both sides
    assert len(train_a) + len(val_a) == len(pairs)  # every caption went with its image
    moved = _pairs(1200, root="/elsewhere/b")  # same files in another folder: the same split
    _, val_b, _ = split_pairs(moved, 0.1)
    assert [Path(p).name for p in val_b.image_ids()] == [Path(p).name for p in val_a.image_ids()]
    _, val_c, _ = split_pairs(_pairs(1200), 0.1)
    assert val_c.image_ids() == val_a.image_ids()


def test_auto_split_size_bounds_and_switch():
    assert held_out_count(1000, 0.1)[0] == 100
    assert held_out_count(300, 0.1)[0] == VAL_MIN_IMAGES  # raised to the minimum
    assert held_out_count(100_000, 0.1)[0] == VAL_MAX_IMAGES  # lowered to the maximum
    assert held_out_count(200, 0.1)[0] == 40  # the minimum would take a quarter: a fifth instead
    n, reason = held_out_count(40, 0.1)  # a fifth is 8 images: no split
    assert n == 0 and "too few" in reason
    train, val, record = split_pairs(_pairs(1000), 0.0)
    assert val is None and train is not None and record.images == 0 and "off" in record.reason
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(_pairs(10), 1.5)


def test_run_without_val_holds_out_images_and_records_it(config, dataset, tmp_path, monkeypatch):
    import retrieval.train.valsplit as valsplit

    monkeypatch.setattr(valsplit, "VAL_MIN_IMAGES", 4)  # the 32-image test set is small
    result = train(config.replace(val_data=None, val_fraction=0.125, epochs=1))
    record = json.loads((result.run_dir / "validation.json").read_text())
    assert record["source"] == "auto" and record["images"] == 4
    assert result.validation == record and result.best_metric is not None
    assert (result.run_dir / "best").is_dir()
    off = train(config.replace(val_data=None, val_fraction=0.0, epochs=1, out_dir=str(tmp_path / "off")))
    assert off.best_metric is None and off.validation["source"] == "none"
    given = train(config.replace(epochs=1, out_dir=str(tmp_path / "given")))
    assert given.validation["source"] == "given"  # --val wins


# ---------------------------------------------------------------------- the schedule


def test_wsd_factor_matches_its_formula():
    warmup, start, length, floor = 4, 10, 5, 0.1
    for step in range(20):
        warm = (step + 1) / warmup if step < warmup else 1.0
        if step < start:
            expected = warm
        else:
            p = min(1.0, (step - start) / length)
            expected = warm * (floor + (1 - floor) * (1 - math.sqrt(p)))
        assert wsd_factor(step, warmup, start, length, floor) == pytest.approx(expected)
    assert [wsd_factor(s, 4, None, 0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # stable
    assert wsd_factor(14, 4, 10, 5) == pytest.approx(1 - math.sqrt(0.8))
    assert wsd_factor(99, 4, 10, 5, 0.1) == pytest.approx(0.1)  # clamped past the end
    assert decay_length(0, 7, 0.2) == 7 and decay_length(70, 7, 0.2) == 14 and decay_length(71, 7, 0.2) == 21


def test_patience_counts_against_gains_of_min_improvement():
    state = LoopState()
    for value in (0.50, 0.503, 0.506, 0.509):  # a creep of tiny gains, each a new best
        state, improved = state.after_validation(value, {"m": value}, min_improvement=0.01)
        assert improved
    assert state.best == 0.509 and state.bad_epochs == 3 and state.gain_ref == 0.50
    state, improved = state.after_validation(0.52, {"m": 0.52}, min_improvement=0.01)
    assert improved and state.bad_epochs == 0 and state.gain_ref == 0.52


# ------------------------------------------------------------- stopping on a plateau


def _val_values(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "val"]


def _synthetic_validation(monkeypatch, values: list[float]) -> None:
    """Validation returns these mean_recall values, one per call (a synthetic plateau)."""
    import retrieval.train.loop as loop

    calls = iter(values)

    def fake(model, pairs, config, device, caches=None):
        value = next(calls)
        return {"mean_recall": value, "t2i/R@10": value}

    monkeypatch.setattr(loop, "validate", fake)


def test_plateau_starts_the_decay_then_stops_and_keeps_the_best(config, monkeypatch):
    # 4 steps per epoch; gains until epoch 3, then a plateau of 2 validations (epochs 4, 5)
    values = [0.1, 0.2, 0.3, 0.301, 0.25, 0.35, 0.2, 0.2, 0.2, 0.2]
    _synthetic_validation(monkeypatch, values)
    config = config.replace(epochs=50, early_stopping_patience=2, min_improvement=0.01, decay_fraction=0.2)
    result = train(config)
    vals = _val_values(result.run_dir)
    # plateau after epoch 5 (20 steps): decay over ceil(0.2 * 5) = 1 epoch, then stop after epoch 6
    assert result.status == "early_stopped" and result.epochs_completed == 6
    assert "plateau" in result.stop_reason
    assert len(vals) == 6 and result.best_metric == 0.35  # the decay epoch's validation was the best
    assert [r["improved"] for r in vals] == [True, True, True, True, False, True]
    train_lr = [r["lr"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]  # fmt: skip
    assert train_lr[2:20] == [config.lr] * 18  # stable after the 2-step warmup
    assert train_lr[20:] == pytest.approx([config.lr * (1 - math.sqrt(k / 4)) for k in range(4)])
    best = load_file(str(result.run_dir / "best" / "model.safetensors"))
    final = load_file(str(result.run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in best)  # best was the last epoch here


def test_best_model_is_the_best_epoch_not_the_last(config, monkeypatch):
    _synthetic_validation(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    result = train(config.replace(epochs=50, early_stopping_patience=2, decay_fraction=0.2))
    assert result.status == "early_stopped" and result.epochs_completed == 4  # plateau after 3, decay 1
    assert result.best_metric == 0.5 and result.model_dir == result.run_dir / "best"
    best = load_file(str(result.run_dir / "best" / "model.safetensors"))
    final = load_file(str(result.run_dir / "final" / "model.safetensors"))
    assert any(not torch.equal(best[k], final[k]) for k in best)


def test_without_a_plateau_the_decay_ends_at_the_cap(config):
    result = train(config.replace(val_data=None, val_fraction=0.0, epochs=3, decay_fraction=0.5))
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    # at epoch 2 (8 steps) the decay of ceil(0.5 * 2) = 1 epoch fits exactly: steps 8..11 decay
    assert result.status == "completed" and result.steps == 12
    assert lrs[2:8] == [config.lr] * 6 and lrs[8] == config.lr and lrs[11] < lrs[10] < lrs[9] < config.lr


def _assert_same_run(whole, resumed) -> None:
    """An interrupted and resumed run ended as the uninterrupted one: same stop, weights and lr per step."""
    assert (resumed.status, resumed.steps, resumed.epochs_completed, resumed.stop_reason) == (
        whole.status,
        whole.steps,
        whole.epochs_completed,
        whole.stop_reason,
    )
    a = load_file(str(whole.run_dir / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def lrs(run) -> list:
        return [json.loads(x).get("lr") for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]

    assert lrs(whole) == lrs(resumed)


@pytest.mark.parametrize("stop_at", [11, 14], ids=["before-the-plateau-decision", "inside-the-decay"])
def test_resume_across_a_plateau_decision_is_bit_identical(config, tmp_path, stop_at):
    # real validation; no gain can reach min_improvement: a plateau after epoch 3 (step 12), then
    # a decay of one epoch (steps 12-15); interrupted before the decision and inside the decay
    config = config.replace(
        model=config.model.replace(dropout=0.2),
        lr=1e-9,
        warmup_steps=0,
        epochs=50,
        early_stopping_patience=2,
        min_improvement=0.5,
        decay_fraction=0.2,
        checkpoint_every=0,
    )
    whole = train(config.replace(out_dir=str(tmp_path / "whole")))
    assert whole.status == "early_stopped"
    stopped = train(config, callback=lambda record: record["step"] == stop_at)
    assert stopped.status == "interrupted"
    _assert_same_run(whole, train(config, resume=True))


def test_cli_no_auto_val_turns_the_split_off(config, tmp_path, monkeypatch, capsys):
    import retrieval.train.valsplit as valsplit
    from retrieval.cli import main

    monkeypatch.setattr(valsplit, "VAL_MIN_IMAGES", 4)
    base = tmp_path / "base.json"
    config.replace(val_data=None, val_fraction=0.125, max_steps=1).save(base)
    for flag, source in (([], "auto"), (["--no-auto-val"], "none")):
        out = tmp_path / f"run-{source}"
        assert main(["train", config.train_data, "--out", str(out), "--config", str(base), *flag]) == 0
        assert json.loads((out / "validation.json").read_text())["source"] == source
        assert "why: max_steps=1 reached" in capsys.readouterr().out


def test_plan_decay_decisions(config):
    from retrieval.train.plateau import plan_decay, stop_reason

    state = LoopState(step=40, epoch=10)
    wsd = config.replace(schedule="plateau", decay_fraction=0.2)
    assert plan_decay(wsd, state, False, 4, 400) == (state, False)  # no plateau, cap far away
    decayed, stop = plan_decay(wsd, state, True, 4, 400)  # plateau: decay over 2 epochs
    assert not stop and (decayed.decay_start, decayed.decay_steps, decayed.decay_reason) == (40, 8, "plateau")
    done = LoopState(step=48, epoch=12, decay_start=40, decay_steps=8, decay_reason="plateau")
    assert plan_decay(wsd, done, False, 4, 400) == (done, True)
    assert "plateau" in stop_reason("early_stopped", wsd, done)
    capped, stop = plan_decay(wsd, state, False, 4, 44)  # the cap is within one decay: decay to it
    assert not stop and (capped.decay_steps, capped.decay_reason) == (4, "cap")
    assert plan_decay(wsd, dataclasses.replace(capped, step=44), False, 4, 44)[1] is False  # the cap ends it
    cosine = config.replace(schedule="cosine")
    assert plan_decay(cosine, state, True, 4, 400) == (state, True)  # cosine: a plateau stops at once


def test_a_run_saved_before_schedules_existed_resumes_only_as_cosine(config):
    first = train(config.replace(schedule="cosine", val_data=None, max_steps=2))
    saved = json.loads((first.run_dir / "config.json").read_text())
    del saved["schedule"]  # as written before the setting existed
    (first.run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"cannot resume.*schedule: 'cosine' -> 'plateau'"):
        train(config.replace(val_data=None, max_steps=3), resume=True)
    assert train(config.replace(schedule="cosine", val_data=None, max_steps=3), resume=True).steps == 3


def test_reduce_cuts_the_lr_at_each_plateau_and_stops_when_a_cut_gains_nothing(config, monkeypatch):
    # 4 steps per epoch, patience 2: gains to epoch 2, plateau after 4 -> cut to 0.5x; a gain at
    # epoch 5, plateau after 7 -> cut to 0.25x; no gain in epochs 8-9 -> stop after epoch 9
    values = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.9]
    _synthetic_validation(monkeypatch, values)
    config = config.replace(
        schedule="reduce", epochs=50, early_stopping_patience=2, min_improvement=0.01, lr_reduce_factor=0.5
    )
    result = train(config)
    assert result.status == "early_stopped" and result.epochs_completed == 9
    assert "no gain since the last of 2 cut(s)" in result.stop_reason
    assert result.best_metric == 0.3
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs[2:16] == [config.lr] * 14  # stable after the 2-step warmup until the first plateau
    assert lrs[16:28] == pytest.approx([config.lr * 0.5] * 12)
    assert lrs[28:] == pytest.approx([config.lr * 0.25] * 8)


def test_reduce_stops_after_its_last_cut(config):
    from retrieval.train.plateau import plan_decay, schedule_factor, stop_reason

    reduce = config.replace(schedule="reduce", lr_reduce_factor=0.1, max_lr_reductions=2, warmup_steps=0)
    state = LoopState(step=40, epoch=10, gain_ref=0.3, bad_epochs=3)
    cut, stop = plan_decay(reduce, state, True, 4, 400)
    assert not stop and (cut.reductions, cut.bad_epochs, cut.reduced_ref) == (1, 0, 0.3)
    assert schedule_factor(reduce, cut, 41, 400) == pytest.approx(0.1)
    assert plan_decay(reduce, cut, False, 4, 400) == (cut, False)
    # a gain since the cut, then another plateau: a second cut; then the plateau after the last cut stops
    gained = dataclasses.replace(cut, gain_ref=0.4)
    second, stop = plan_decay(reduce, gained, True, 4, 400)
    assert not stop and second.reductions == 2
    assert schedule_factor(reduce, second, 41, 400) == pytest.approx(0.01)
    last = dataclasses.replace(second, gain_ref=0.5)
    assert plan_decay(reduce, last, True, 4, 400) == (last, True)
    assert "after 2 cut(s)" in stop_reason("early_stopped", reduce, last)
    # without validation it decays to the cap like "plateau"
    capped, stop = plan_decay(reduce, LoopState(step=40, epoch=10), False, 4, 44)
    assert not stop and capped.decay_reason == "cap"


def test_resume_across_a_reduction_is_bit_identical(config, tmp_path):
    config = config.replace(
        model=config.model.replace(dropout=0.2),
        schedule="reduce",
        lr=1e-9,
        warmup_steps=0,
        epochs=50,
        early_stopping_patience=1,
        min_improvement=0.5,
        checkpoint_every=0,
    )
    # no gain reaches min_improvement: a cut after epoch 2, the stop after epoch 3 (no gain since)
    whole = train(config.replace(out_dir=str(tmp_path / "whole")))
    assert whole.status == "early_stopped" and whole.epochs_completed == 3
    assert train(config, callback=lambda record: record["step"] == 10).status == "interrupted"
    _assert_same_run(whole, train(config, resume=True))
