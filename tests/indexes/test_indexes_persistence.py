"""Atomic saves under injected failures, stale data cleanup, writer lock, readers during saves."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered

from indexes import Collection, faiss_index, metadata, persist, store

D = 8


def _make(path: Path, n: int = 50, spec: str = "Flat") -> np.ndarray:
    x = clustered(n, D, seed=20)
    with Collection.create(path, D, index=spec) as coll:
        coll.add(x, [{"i": i} for i in range(n)])
    return x


def _boom(*args, **kwargs):
    raise OSError("disk on fire")


STEPS = {
    "write_index": (faiss_index, "write_index"),
    "vectors": (store, "_save_npy"),
    "metadata": (metadata.MetadataStore, "write_to"),
    "fsync_dir": (persist, "fsync_dir"),
    "manifest_replace": (os, "replace"),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_failed_save_keeps_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "c"
    x = _make(path)
    before = sorted(p.name for p in path.iterdir())
    coll = Collection.open(path)
    coll.add(clustered(10, D, seed=21), [{"i": -1}] * 10)
    coll.remove([0, 1])
    owner, name = STEPS[step]
    with monkeypatch.context() as m:
        m.setattr(owner, name, _boom)
        with pytest.raises(OSError, match="disk on fire"):
            coll.save()
    assert sorted(p.name for p in path.iterdir()) == before, "no half-written folder or temp file is left"
    with Collection.open(path, read_only=True) as old:
        assert len(old) == 50 and old.get([0]) == [{"i": 0}]
        np.testing.assert_array_equal(old.vectors([3]), x[3:4])
    coll.save()  # the handle is still usable; retrying succeeds
    coll.close()
    with Collection.open(path, read_only=True) as new:
        assert len(new) == 58 and 0 not in new.ids()


def test_failure_after_commit_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c"
    _make(path)
    with Collection.open(path) as coll:
        coll.add(clustered(1, D))
        monkeypatch.setattr(persist.shutil, "rmtree", _boom)
        coll.save()  # old folder cannot be deleted: logged, the save itself committed
        monkeypatch.undo()
    with Collection.open(path) as coll:  # the writable open sweeps the leftover folder
        assert len(coll) == 51
    assert len([p for p in path.iterdir() if p.is_dir()]) == 1


def test_interrupted_save_folder_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c"
    _make(path)
    (path / "v999999-deadbeef").mkdir()  # as left by a process killed mid-save
    (path / "v999999-deadbeef" / "index.faiss").write_bytes(b"partial")
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 50
    with Collection.open(path) as coll:
        assert len(coll) == 50
    assert not (path / "v999999-deadbeef").exists()


def test_kill_during_save_leaves_old_version(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _make(path)
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from indexes import Collection, faiss_index
        real = faiss_index.write_index
        def die(index, p):
            real(index, p)
            os._exit(9)  # killed after writing the new index, before the manifest
        faiss_index.write_index = die
        c = Collection.open({str(path)!r})
        c.add(np.ones((5, {D}), dtype=np.float32))
        c.save()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == 9
    with Collection.open(path) as coll:
        assert len(coll) == 50


def test_readers_see_consistent_versions_during_saves(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _make(path, n=20)
    writer = textwrap.dedent(
        f"""
        import numpy as np
        from indexes import Collection
        with Collection.open({str(path)!r}) as c:
            for step in range(15):
                c.add(np.full((10, {D}), step + 1, dtype=np.float32), [{{"step": step}}] * 10)
                c.save()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer])
    seen = set()
    try:
        while proc.poll() is None or len(seen) < 2:
            with Collection.open(path, read_only=True) as coll:
                n = len(coll)
                assert (n - 20) % 10 == 0
                ids = coll.ids()
                assert ids.size == n and len(coll.get(ids[-3:])) == 3
                _, found = coll.search(np.ones(D, dtype=np.float32), 5)
                assert (found >= 0).all() and np.isin(found, ids).all()
                seen.add(n)
            if proc.poll() is not None and len(seen) >= 1:
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 170


def test_unsaved_changes_warn_on_close(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c"
    _make(path)
    coll = Collection.open(path)
    coll.add(clustered(1, D))
    coll.close()
    assert "unsaved changes" in caplog.text
    with Collection.open(path, read_only=True) as again:
        assert len(again) == 50
