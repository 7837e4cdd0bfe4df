"""The trainer's parts: schedule, optimizers, data order and sharding, sampling weights, checkpoints."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from retrieval.config import TrainConfig
from retrieval.train import checkpoint as ckpt
from retrieval.train.history import MetricsLog, plot_history
from retrieval.train.optim import OPTIMIZERS, build_optimizer, lr_factor, parameter_groups
from retrieval.train.sampling import SeededItems, epoch_order, item_seed, plan_epoch, sample_weights
from retrieval.train.state import LoopState


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)

    def save(self, directory) -> None:  # the TwinEncoder.save contract, enough for checkpoints
        from safetensors.torch import save_model

        directory.mkdir(parents=True)
        save_model(self, str(directory / "model.safetensors"))


def test_warmup_then_cosine():
    factors = [lr_factor(s, warmup_steps=4, total_steps=14) for s in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[9] == pytest.approx(0.5) and factors[-1] < 0.03
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert lr_factor(20, 0, 10, min_ratio=0.1) == pytest.approx(0.1)  # clamped past the end
    assert lr_factor(0, 0, 1) == 1.0


def test_no_decay_on_gains_biases_and_logit_scale():
    model = _Tiny()
    groups = parameter_groups(model, weight_decay=0.1)
    assert [id(p) for p in groups[0]["params"]] == [id(model.proj.weight)] and groups[0][
        "weight_decay"
    ] == 0.1
    assert {id(p) for p in groups[1]["params"]} == {
        id(model.proj.bias),
        id(model.norm.weight),
        id(model.norm.bias),
        id(model.logit_scale),
    }
    assert groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_by_name(name):
    model = _Tiny()
    optimizer = build_optimizer(TrainConfig(optimizer=name, lr=0.1), model)
    before = model.proj.weight.detach().clone()
    model.proj(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.proj.weight)
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_runs_fused_with_the_reference_updates(name):
    """Adam / AdamW update every parameter in one fused kernel: the same weights, step by step, as the
    optimizer run one tensor at a time (with the groups' own rates and decay)."""
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.3)
    torch.manual_seed(0)
    fast_model, slow_model = _Tiny(), _Tiny()
    slow_model.load_state_dict(fast_model.state_dict())
    fast = build_optimizer(config, fast_model)
    assert all(group["fused"] for group in fast.param_groups)
    groups = parameter_groups(slow_model, config.weight_decay, config.tower_lr_scale)
    for group in groups:
        group["lr"] = config.lr * group.pop("lr_scale")
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    slow = kind(groups, lr=config.lr, betas=tuple(config.betas), eps=1e-6, foreach=False)
    for _ in range(4):
        x = torch.randn(5, 4)
        for model, optimizer in ((fast_model, fast), (slow_model, slow)):
            optimizer.zero_grad()
            (model.norm(model.proj(x)) * model.logit_scale).square().sum().backward()
            optimizer.step()
    for a, b in zip(fast_model.parameters(), slow_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match=r"unknown TrainConfig.optimizer 'lamb'.*'adamw', 'adam', 'sgd'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_plan_shards_global_batches_over_ranks():
    single = plan_epoch(20, batch_size=6, world_size=1, rank=0, grad_accum=1)
    assert single == [[list(range(0, 6))], [list(range(6, 12))], [list(range(12, 18))]]  # last 2 dropped
    two = [plan_epoch(20, batch_size=3, world_size=2, rank=r, grad_accum=1) for r in range(2)]
    for step in range(3):
        assert two[0][step][0] + two[1][step][0] == single[step][0]
    accum = plan_epoch(20, batch_size=3, world_size=1, rank=0, grad_accum=2)
    assert [len(step) for step in accum] == [2, 2, 2]  # 6 micro-batches -> 3 steps
    assert plan_epoch(5, 8, 1, 0, 1) == [[[0, 1, 2, 3, 4]]]  # smaller than a batch: one batch
    assert plan_epoch(3, 8, 2, 1, 1) == [[[2]]]
    assert plan_epoch(16, 8, 1, 0, 4) == [[list(range(8)), list(range(8, 16))]]  # short epoch: one step
    assert plan_epoch(0, 8, 1, 0, 1) == []


def test_epoch_order_is_seeded_and_changes_per_epoch():
    assert epoch_order(10, 0, seed=1) == epoch_order(10, 0, seed=1)
    assert sorted(epoch_order(10, 0, seed=1)) == list(range(10))
    assert epoch_order(10, 0, seed=1) != epoch_order(10, 1, seed=1)
    assert epoch_order(10, 0, seed=1) != epoch_order(10, 0, seed=2)
    assert item_seed(0, 0, 1) != item_seed(0, 0, 2) and 0 <= item_seed(5, 7, 9) < 2**63


def _pairs(values, column="w"):
    return [SimpleNamespace(image=f"{i}.png", metadata={column: v}) for i, v in enumerate(values)]


def test_weighted_sampling_from_numbers_and_from_class_labels():
    weights = sample_weights(_pairs([1.0, 1.0, 8.0]), "w")
    draws = Counter(epoch_order(3000, 0, seed=0, weights=weights.repeat(1000)))
    by_kind = Counter(i % 3 for i in draws.elements())
    assert by_kind[2] > 5 * by_kind[0]  # weight 8 vs 1, drawn with replacement
    labels = sample_weights(_pairs(["cat"] * 9 + ["dog"]), "w")
    assert labels.tolist() == pytest.approx([1 / 9] * 9 + [1.0])  # classes drawn equally often
    with pytest.raises(ValueError, match="non-negative"):
        sample_weights(_pairs([1.0, -1.0]), "w")
    with pytest.raises(ValueError, match="no metadata field 'x'"):
        sample_weights(_pairs([1.0]), "x")


def test_seeded_items_fix_randomness_without_touching_the_caller():
    class Random(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return float(torch.rand(()))

    items = SeededItems(Random())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = items[(0, 42)], items[(1, 42)]
    assert a == b and items[(0, 43)] != a
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["adamw", "sgd", "rmsprop"])
def test_checkpoint_round_trip_is_exact(tmp_path, name):
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = build_optimizer(TrainConfig(optimizer=name), model)
    for _ in range(2):
        model.proj(torch.randn(2, 4)).pow(2).sum().backward()
        optimizer.step()
    torch.manual_seed(123)
    path = ckpt.save_checkpoint(tmp_path, model, optimizer, LoopState(step=7, epoch=1, step_in_epoch=2), keep=1)
    expected_rng = torch.rand(3)
    assert not any(p.name.endswith(".pkl") or p.suffix in (".pt", ".bin") for p in path.rglob("*"))
    fresh = build_optimizer(TrainConfig(optimizer=name), model)
    state = ckpt.restore_training_state(path, fresh)
    assert state == LoopState(step=7, epoch=1, step_in_epoch=2)
    assert torch.equal(torch.rand(3), expected_rng)
    want, got = optimizer.state_dict(), fresh.state_dict()
    assert want["param_groups"] == got["param_groups"]
    for pid, entries in want["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["state"][pid][key])), (pid, key)
    ckpt.save_checkpoint(tmp_path, model, optimizer, LoopState(step=8, epoch=1, step_in_epoch=3), keep=1)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000008"
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-00000008"]


def test_metrics_log_truncates_for_resume_and_plots(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.append({"kind": "train", "step": step, "loss": 1.0 / step})
    log.append({"kind": "val", "step": 5, "epoch": 1, "t2i/R@1": 0.5, "i2t/R@1": 0.25})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "st')  # a line cut short by a crash
    log.truncate_after(3)
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    log.append({"kind": "val", "step": 3, "epoch": 1, "t2i/R@1": 0.5, "i2t/R@1": math.nan})
    written = plot_history(log.records(), tmp_path)
    assert sorted(p.name for p in written) == ["loss.png", "recall.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_loop_state_transitions_and_round_trip():
    state = LoopState().after_step().after_step()
    assert (state.step, state.step_in_epoch, state.epoch) == (2, 2, 0)
    state = state.after_epoch()
    assert (state.step, state.step_in_epoch, state.epoch) == (2, 0, 1)
    state, improved = state.after_validation(0.5, {"mean_recall": 0.5})
    assert improved and state.best == 0.5 and state.bad_epochs == 0
    state, improved = state.after_validation(0.4, {"mean_recall": 0.4})
    assert not improved and state.best == 0.5 and state.bad_epochs == 1
    assert state.best_metrics == {"mean_recall": 0.5}
    assert LoopState.from_dict({**state.to_dict(), "optimizer": {}, "rng": {}}) == state
