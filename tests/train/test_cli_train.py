"""``retrieval train`` through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from retrieval.cli import main
from retrieval.cli.train import apply_overrides


def test_cli_trains_with_overrides_and_resumes(dataset, tiny_model, tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"model": tiny_model.to_dict(), "batch_size": 8, "device": "cpu"}))
    out = tmp_path / "run"
    argv = [
        "train",
        str(dataset["train"]),
        "max_steps=2",
        "epochs=1",
        "--out",
        str(out),
        "--config",
        str(base),
    ]
    code = main([*argv, "--val", str(dataset["val"]), "--set", "loss=triplet", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "max_steps: 2 steps" in printed and str(out / "best") in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["loss"] == "triplet" and saved["max_steps"] == 2 and saved["model"]["embed_dim"] == 16
    assert main([*argv, "--set", "loss=triplet", "--no-progress"]) == 1  # exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert (
        main([*argv[:2], "max_steps=3", *argv[4:], "--set", "loss=triplet", "--resume", "--no-progress"]) == 0
    )
    assert "max_steps: 3 steps" in capsys.readouterr().out


def test_cli_reports_bad_overrides(dataset, tmp_path, capsys):
    assert main(["train", str(dataset["train"]), "--out", str(tmp_path / "r"), "--set", "nope=1"]) == 1
    assert "unknown TrainConfig field(s) ['nope']" in capsys.readouterr().err


def test_apply_overrides_nested_and_typed():
    got = apply_overrides(
        {"lr": 1.0, "model": {"embed_dim": 8}}, ["lr=3e-4", "model.embed_dim=64", "loss=clip"]
    )
    assert got == {"lr": 3e-4, "model": {"embed_dim": 64}, "loss": "clip"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ValueError, match="not a nested config"):
        apply_overrides({"lr": 1.0}, ["lr.x=1"])
