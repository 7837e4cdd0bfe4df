"""Checkers, repairs, readers and writers at the same time: no false alarm, no lost commit, no torn read.

The first tests place a writer's commit exactly between two steps of the checker (deterministic);
the others run real processes side by side for a bounded time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered

from indexes import Collection, Limits, files, persist
from indexes.verify import verify_path

D = 8
NO_MERGES = Limits(merge_factor=1_000)


def _two_segments(path: Path, spec: str = "HNSW32") -> np.ndarray:
    x = clustered(1_100, D, seed=21)
    with Collection.create(path, D, index=spec, limits=NO_MERGES) as coll:
        coll.add(x[:500], [{"i": i} for i in range(500)])
        coll.save()
        coll.add(x[500:1_000], [{"i": i} for i in range(500, 1_000)])
        coll.save()
        coll.remove(np.arange(0, 1_000, 100))
    return x


def _commit_after_first_manifest_read(
    monkeypatch: pytest.MonkeyPatch, write: Callable[[], None]
) -> list[int]:
    """Make ``write`` (a whole writable session) run right after the checker first reads the manifest."""
    real = persist.read_manifest
    calls: list[int] = []

    def racing(path: Path) -> dict:
        manifest = real(path)
        calls.append(int(manifest["version"]))
        if len(calls) == 1:
            write()
        return manifest

    monkeypatch.setattr(persist, "read_manifest", racing)
    return calls


def test_check_beside_a_compaction_raises_no_false_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compaction deletes the files of the version the checker read: it checks the new version."""
    path = tmp_path / "c"
    x = _two_segments(path)

    def write() -> None:
        with Collection.open(path, limits=NO_MERGES) as coll:
            coll.add(x[1_000:1_010])
            coll.compact(force=True)

    calls = _commit_after_first_manifest_read(monkeypatch, write)
    report = verify_path(path)
    monkeypatch.undo()
    assert report.ok, report.summary()
    assert len(set(calls)) == 2, "the checker saw the manifest move and checked the new version"
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 1_000 and len(coll.segments) == 1


def test_repair_beside_a_compaction_never_overwrites_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c"
    x = _two_segments(path)

    def write() -> None:
        with Collection.open(path, limits=NO_MERGES) as coll:
            coll.add(x[1_000:1_010])
            coll.compact(force=True)

    _commit_after_first_manifest_read(monkeypatch, write)
    report = verify_path(path, repair=True)
    monkeypatch.undo()
    assert report.ok and not report.repaired and not report.lost_ids, report.summary()
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 1_000 and coll.ids()[-1] == 1_009 and coll.verify().ok


def test_repair_of_real_damage_keeps_a_commit_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damage found in version v is repaired from the newest version, under the writer lock."""
    monkeypatch.setattr(files, "BLOCK", 4_096)  # several checksum blocks per file
    path = tmp_path / "c"
    x = _two_segments(path)
    entry = json.loads((path / "manifest.json").read_text())["segments"][0]
    vectors = path / entry["name"] / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[8_200:8_264] = bytes(b ^ 0xA5 for b in data[8_200:8_264])  # a middle block: unseen on open
    vectors.write_bytes(bytes(data))
    ends_only = Limits(merge_factor=1_000, verify_on_open_bytes=0)

    def write() -> None:  # a writer that never reads the damaged block adds a segment
        with Collection.open(path, limits=ends_only) as coll:
            coll.add(x[1_000:1_010], [{"i": i} for i in range(1_000, 1_010)])

    calls = _commit_after_first_manifest_read(monkeypatch, write)
    report = verify_path(path, repair=True)
    monkeypatch.undo()
    assert report.repaired and not report.lost_ids, report.summary()
    assert len(set(calls)) == 2, "the repair started from the newest version"
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 1_000 and coll.verify().ok, "the segment committed meanwhile is kept"
        assert coll.get([1_005]) == [{"i": 1_005}]
        np.testing.assert_array_equal(coll.vectors([1, 1_005]), x[[1, 1_005]])
