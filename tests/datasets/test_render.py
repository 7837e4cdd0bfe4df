"""Rendering the ready-made datasets' images: in worker processes when there are many, the same
bytes as rendering here, in order, resumable, and a renderer's error reaches the caller."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from retrieval.datasets import _build


@dataclasses.dataclass(frozen=True)
class _Record:
    id: str
    value: int


def _render(record: _Record, scale: int) -> bytes:
    if record.value < 0:
        raise ValueError(f"cannot render {record.id}")
    return f"{record.id}:{record.value * scale}".encode()


def _records(n: int) -> list[_Record]:
    return [_Record(f"r{i:03d}", i) for i in range(n)]


def test_many_images_render_in_worker_processes_with_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "PARALLEL_FROM", 10)
    records = _records(40)
    render = functools.partial(_render, scale=3)
    spawned = []
    real = _build._rendered

    def spy(render_fn, todo):
        spawned.append(len(todo) >= _build.PARALLEL_FROM and _build._picklable(render_fn, todo[0]))
        return real(render_fn, todo)

    monkeypatch.setattr(_build, "_rendered", spy)
    assert (
        _build.render_missing(records, tmp_path / "a", render, force=False, progress=False, desc="", unit="")
        == 40
    )
    assert spawned == [True]
    for record in records:
        assert (tmp_path / "a" / f"{record.id}.png").read_bytes() == _render(record, 3)
    (tmp_path / "a" / "r007.png").unlink()  # resumable: only what is missing renders again
    assert (
        _build.render_missing(records, tmp_path / "a", render, force=False, progress=False, desc="", unit="")
        == 1
    )


def test_a_renderer_that_cannot_travel_runs_here(tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "PARALLEL_FROM", 10)
    records = _records(30)
    done = _build.render_missing(
        records, tmp_path, lambda r: _render(r, 2), force=False, progress=False, desc="", unit=""
    )  # a lambda does not pickle: rendered in this process
    assert done == 30 and (tmp_path / "r029.png").read_bytes() == b"r029:58"


def test_an_error_in_a_worker_reaches_the_caller_and_keeps_what_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "PARALLEL_FROM", 10)
    records = [*_records(20), _Record("broken", -1), *_records(40)[20:]]
    with pytest.raises(ValueError, match="cannot render broken"):
        _build.render_missing(
            records,
            tmp_path,
            functools.partial(_render, scale=1),
            force=False,
            progress=False,
            desc="",
            unit="",
        )
    written = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert written == [f"r{i:03d}" for i in range(20)]  # in order up to the broken one
