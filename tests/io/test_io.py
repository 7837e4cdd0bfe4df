"""retrieval.io: atomic writes, staged folders, the job lock."""

from __future__ import annotations

import json
import os
import stat

import pytest

from retrieval.io import (
    FileLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_temporaries,
    staged_directory,
)


def test_atomic_writes_replace_whole_files_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": 1}, sort_keys=True)
    assert json.loads(target.read_text()) == {"b": 1} and target.read_text().endswith("\n")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    atomic_write_bytes(target, b"third", durable=False)
    assert target.read_bytes() == b"third"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_directory_swaps_in_or_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "model"
    with staged_directory(folder) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert (folder / "w.bin").read_bytes() == b"1"
    with pytest.raises(RuntimeError), staged_directory(folder) as tmp:
        (tmp / "w.bin").write_bytes(b"2")
        raise RuntimeError("crash while writing")
    assert (folder / "w.bin").read_bytes() == b"1"
    with staged_directory(folder) as tmp:
        (tmp / "v.bin").write_bytes(b"3")
    assert sorted(p.name for p in folder.iterdir()) == ["v.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_remove_temporaries(tmp_path):
    (tmp_path / ".shard.npz.x1.tmp").write_bytes(b"half")
    (tmp_path / "shard.npz").write_bytes(b"whole")
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["shard.npz"]


def test_file_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / ".job.lock"
    with FileLock(path, busy="a job holds it"), pytest.raises(ValueError, match="a job holds it"):
        FileLock(path, busy="a job holds it")
    FileLock(path, busy="never").close()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask_of_the_moment(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    from retrieval.io import settle_file

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))  # created 0600 by safetensors
        settle_file(tmp_path / "w.safetensors")
    finally:
        os.umask(previous)
    for name in ("a.txt", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
