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

from indexes import Collection, Limits, faiss_index, files, metadata, persist, segment

D = 8


def _make(path: Path, n: int = 50, spec: str = "HNSW32") -> np.ndarray:
    x = clustered(n, D, seed=20)
    with Collection.create(path, D, index=spec) as coll:
        coll.add(x, [{"i": i} for i in range(n)])
    return x


def _boom(*args, **kwargs):
    raise OSError("disk on fire")


# every kind of write a save makes (HNSW: the new segment gets a graph file)
SAVE_STEPS = {
    "vectors": (files, "write_npy"),
    "index": (faiss_index, "write_index"),
    "metadata": (metadata.MetadataStore, "write_to"),
    "checksum": (files, "digest_file"),
    "deletion_record": (segment, "write_deleted"),
    "fsync_dir": (files, "fsync_dir"),
    "manifest_replace": (os, "replace"),
}


@pytest.mark.parametrize("step", sorted(SAVE_STEPS))
def test_failed_save_keeps_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "c"
    x = _make(path)
    before = sorted(p.name for p in path.rglob("*"))
    coll = Collection.open(path)
    coll.add(clustered(10, D, seed=21), [{"i": -1}] * 10)
    coll.remove([0, 1])
    owner, name = SAVE_STEPS[step]
    with monkeypatch.context() as m:
        m.setattr(owner, name, _boom)
        with pytest.raises(OSError, match="disk on fire"):
            coll.save()
    assert sorted(p.name for p in path.rglob("*")) == before, "no half-written file or folder is left"
    with Collection.open(path, read_only=True) as old:
        assert len(old) == 50 and old.get([0]) == [{"i": 0}]
        np.testing.assert_array_equal(old.vectors([3]), x[3:4])
    coll.save()  # the handle is still usable; retrying succeeds
    coll.close()
    with Collection.open(path, read_only=True) as new:
        assert len(new) == 58 and 0 not in new.ids()
        assert new.verify().ok


def _many_segments(path: Path, saves: int = 5) -> Collection:
    """A collection of several small segments with removals (what compaction merges)."""
    x = clustered(40 * saves, D, seed=22)
    coll = Collection.create(path, D, index="HNSW32")
    for s in range(saves):
        coll.add(x[40 * s : 40 * (s + 1)], [{"i": 40 * s + i} for i in range(40)])
        coll.save()
    coll.remove(np.arange(0, 40 * saves, 3))
    coll.save()
    return coll


COMPACT_STEPS = {
    "vectors": (files.NpyWriter, "write"),
    "metadata": (metadata, "merge_files"),
    "index": (faiss_index, "write_index"),
    "fsync_dir": (files, "fsync_dir"),
    "manifest_replace": (os, "replace"),
}


@pytest.mark.parametrize("step", sorted(COMPACT_STEPS))
def test_failed_compaction_keeps_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "c"
    coll = _many_segments(path)
    want_ids = coll.ids()
    want = coll.get(want_ids)
    before = sorted(p.name for p in path.rglob("*"))
    owner, name = COMPACT_STEPS[step]
    with monkeypatch.context() as m:
        m.setattr(owner, name, _boom)
        with pytest.raises(OSError, match="disk on fire"):
            coll.compact(force=True)
    assert sorted(p.name for p in path.rglob("*")) == before
    assert coll.ids().tolist() == want_ids.tolist(), "the handle keeps its segments"
    with Collection.open(path, read_only=True) as old:
        assert old.ids().tolist() == want_ids.tolist() and old.get(want_ids) == want
    assert coll.compact(force=True), "retrying merges"
    assert len(coll.segments) == 1 and coll.info()["tombstones"] == 0
    coll.close()
    with Collection.open(path, read_only=True) as new:
        assert new.ids().tolist() == want_ids.tolist() and new.get(want_ids) == want
        assert new.verify().ok


def test_failure_after_commit_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c"
    coll = _many_segments(path)
    n = len(coll)
    monkeypatch.setattr(persist.shutil, "rmtree", _boom)
    coll.compact(force=True)  # the merged segments cannot be deleted: logged, the merge itself committed
    monkeypatch.undo()
    coll.close()
    assert len([p for p in path.iterdir() if p.is_dir()]) > 1
    with Collection.open(path) as coll:  # the writable open sweeps the leftover folders
        assert len(coll) == n
    assert len([p for p in path.iterdir() if p.is_dir()]) == 1


def test_fsync_failure_after_rename_keeps_both_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is the commit; if the folder cannot be fsynced afterwards, the previous version's files
    must survive (a power loss could bring its manifest back)."""
    path = tmp_path / "c"
    coll = _many_segments(path)
    old = persist.read_manifest(path)
    calls = {"n": 0}
    real = persist.fsync_dir

    def fail_after_replace(p: Path) -> None:
        if p == path and calls["n"] > 0:
            raise OSError("fsync failed")
        calls["n"] += p == path
        real(p)

    monkeypatch.setattr(persist, "fsync_dir", fail_after_replace)
    coll.compact(force=True)  # committed: no exception
    monkeypatch.undo()
    assert persist.read_manifest(path)["version"] == old["version"] + 1
    for entry in old["segments"]:
        assert (path / entry["name"]).is_dir(), "files of the previous version are kept"
    coll.close()


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


@pytest.mark.parametrize("during", ["save", "compaction"])
def test_kill_leaves_old_version(tmp_path: Path, during: str) -> None:
    path = tmp_path / "c"
    coll = _many_segments(path)
    want = coll.ids().tolist()
    coll.close()
    action = (
        f"c.add(np.ones((5, {D}), dtype=np.float32)); c.save()"
        if during == "save"
        else "c.compact(force=True)"
    )
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from indexes import Collection, files
        real = files.write_npy
        def die(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(9)  # killed after writing a new file, before the manifest
        files.write_npy = die
        files.NpyWriter.__exit__ = lambda self, *a: os._exit(9)
        c = Collection.open({str(path)!r})
        {action}
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == 9
    with Collection.open(path) as coll:
        assert coll.ids().tolist() == want and coll.verify().ok
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == sorted(
        e["name"] for e in persist.read_manifest(path)["segments"]
    )


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


def test_dropping_a_handle_with_unsaved_changes_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gc
    import logging

    coll = Collection.create(tmp_path / "c", 4, index="Flat")
    coll.add(np.eye(4, dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="indexes"):
        del coll
        gc.collect()
    assert "unsaved changes" in caplog.text and str(tmp_path / "c") in caplog.text
    with Collection.open(tmp_path / "c") as coll:  # the lock went with the handle; nothing was committed
        assert len(coll) == 0


@pytest.mark.parametrize("mark", [True, False], ids=["commit-mark", "generations-only"])
def test_a_manifest_older_than_its_segments_is_refused_and_nothing_is_swept(
    tmp_path: Path, mark: bool
) -> None:
    """manifest.json replaced by an older copy (a restore of one file, a sync race): opens refuse with
    an error naming the newer files, nothing is deleted, and a repair never hands their ids out again."""
    from indexes.files import DamagedFileError
    from indexes.verify import verify_path

    path = tmp_path / "c"
    x = clustered(12, 4, seed=3)
    with Collection.create(path, 4, index="Flat", limits=Limits(merge_factor=1_000)) as coll:
        coll.add(x[:4])
        coll.save()
        old = (path / "manifest.json").read_bytes()
        coll.add(x[4:8])
        coll.save()
        coll.add(x[8:10])  # committed when the block ends
    if not mark:  # a collection written before the commit mark existed: two versions newer are needed
        (path / persist.COMMITTED).unlink()
    (path / "manifest.json").write_bytes(old)
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    for read_only in (True, False):
        with pytest.raises(DamagedFileError, match=r"manifest\.json.*newer.*s0000"):
            Collection.open(path, read_only=read_only)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == before, "nothing was deleted"
    report = verify_path(path)
    assert not report.ok and "newer" in report.problems[0].detail, report.summary()
    repaired = verify_path(path, repair=True)
    assert repaired.repaired and repaired.ok is False
    with Collection.open(path) as coll:
        assert coll.ids().tolist() == [0, 1, 2, 3] and coll.verify().ok
        assert coll.add(x[10:11]).tolist() == [10], "the ids of the newer versions are never handed out again"
