"""Checkers, repairs, readers and writers at the same time: no false alarm, no lost commit, no torn read.

The first tests place a writer's commit exactly between two steps of the checker (deterministic);
the others run real processes side by side for a bounded time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
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


# ---------------------------------------------------------------------------------------------- processes
WRITER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from indexes import Collection, CollectionBusyError, Limits

    path, seconds, seed, out, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    rng = np.random.default_rng(seed)
    limits = Limits(merge_factor=2, tier_floor=4)  # merges on most saves: files of old versions go away
    deadline = time.time() + seconds
    mine, commits, busy = [], 0, 0
    while time.time() < deadline:
        try:
            coll = Collection.open(path, limits=limits)
        except CollectionBusyError:
            busy += 1
            time.sleep(0.005)
            continue
        with coll:
            for _ in range(50 if mode == "hold" else 1):
                x = rng.standard_normal((20, 8)).astype("float32")
                mine += coll.add(x, [{"w": seed}] * 20).tolist()
                live = [i for i in mine if i in set(coll.ids().tolist())]
                if len(live) > 60:
                    gone = rng.choice(live, 10, replace=False).tolist()
                    coll.remove(gone)
                if rng.random() < 0.3:
                    coll.compact(force=True)
                else:
                    coll.save()
                commits += 1
                if time.time() >= deadline:
                    break
        if mode == "turns":
            time.sleep(0.02)  # let the other writer take its turn
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids().tolist()
        mine_live = sorted(set(ids) & set(mine))
    with open(out, "w") as fh:
        json.dump({"commits": commits, "busy": busy, "added": mine, "live": mine_live}, fh)
    """
)


def _writer(path: Path, seconds: float, seed: int, out: Path, mode: str = "hold") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seconds), str(seed), str(out), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2_000:]
    return json.loads(out.read_text())


def _small(path: Path) -> None:
    with Collection.create(path, D, index="HNSW8") as coll:
        coll.add(clustered(100, D, seed=22), [{"w": -1}] * 100)


def test_check_and_repair_beside_a_writer_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify(), `retrieval check` and `check --repair` in a loop while another process adds, removes,
    saves and compacts: every report is clean, nothing is repaired, and the writer's commits all stay."""
    from retrieval.cli import main

    path = tmp_path / "c"
    _small(path)
    proc = _writer(path, 2.5, 1, tmp_path / "w.json")
    reports, cli_runs, repairs = 0, 0, 0
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        report = verify_path(path)
        assert report.ok, report.summary()
        reports += 1
        if reports % 5 == 0:
            assert main(["check", str(path)]) == 0, capsys.readouterr()
            cli_runs += 1
        if reports % 7 == 0:
            repaired = verify_path(path, repair=True)
            assert repaired.ok and not repaired.repaired, repaired.summary()
            repairs += 1
    result = _finish(proc, tmp_path / "w.json")
    assert result["commits"] >= 3 and reports >= 5, (result["commits"], reports)
    with Collection.open(path, read_only=True) as coll:
        assert sorted(set(coll.ids().tolist()) - set(range(100))) == result["live"], "no commit was lost"
        assert coll.verify().ok
    print(f"{reports} checks, {cli_runs} CLI runs, {repairs} repairs beside {result['commits']} commits")


def test_two_writer_processes_take_turns_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _small(path)
    procs = [_writer(path, 2.0, seed, tmp_path / f"w{seed}.json", mode="turns") for seed in (1, 2)]
    results = [_finish(p, tmp_path / f"w{seed}.json") for p, seed in zip(procs, (1, 2))]
    assert all(r["commits"] >= 1 for r in results) and sum(r["commits"] for r in results) >= 4, [
        (r["commits"], r["busy"]) for r in results
    ]
    assert not set(results[0]["added"]) & set(results[1]["added"]), "an id was handed out twice"
    with Collection.open(path, read_only=True) as coll:
        ids = set(coll.ids().tolist())
        for seed, r in zip((1, 2), results):
            mine = {i for i in ids if coll.get([i])[0]["w"] == seed}
            assert mine == set(r["live"]), f"writer {seed} lost commits"
        assert coll.verify().ok


READER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from indexes import Collection

    path, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    deadline = time.time() + seconds
    opens, problems = 0, []
    q = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    while time.time() < deadline:
        with Collection.open(path, read_only=True) as coll:
            opens += 1
            ids = coll.ids()
            if len(coll) != ids.size:
                problems.append(f"len {len(coll)} but {ids.size} ids")
            _, found = coll.search(q, 10)
            if not np.isin(found[found >= 0], ids).all():
                problems.append("search returned ids the version does not hold")
            if ids.size:
                coll.get(ids[-5:])
                coll.vectors(ids[:5])
    with open(out, "w") as fh:
        json.dump({"opens": opens, "problems": problems[:10]}, fh)
    """
)


def test_readers_across_compactions(tmp_path: Path) -> None:
    """A reader keeps answering from the version it opened while a writer compacts away its files, and
    readers opening meanwhile always see one whole version."""
    path = tmp_path / "c"
    x = clustered(300, D, seed=23)
    with Collection.create(path, D, index="Flat", limits=NO_MERGES) as coll:
        for lo in range(0, 300, 100):
            coll.add(x[lo : lo + 100], [{"i": i} for i in range(lo, lo + 100)])
            coll.save()
    reader = Collection.open(path, read_only=True)
    before = reader.search(x[:10], 5)
    opener = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), "2.0", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer = _writer(path, 2.0, 3, tmp_path / "w.json")
    result = _finish(writer, tmp_path / "w.json")
    _, err = opener.communicate(timeout=120)
    assert opener.returncode == 0, err.decode()[-2_000:]
    opened = json.loads((tmp_path / "r.json").read_text())
    assert opened["opens"] >= 3 and not opened["problems"], opened
    assert result["commits"] >= 2
    assert not (set(e.name for e in path.iterdir()) & {s["name"] for s in reader.segments}), (
        "the reader's segments were compacted away on disk"
    )
    after = reader.search(x[:10], 5)  # still the version it opened, from its open files
    np.testing.assert_array_equal(after[1], before[1])
    assert len(reader) == 300 and reader.get([299]) == [{"i": 299}]
    np.testing.assert_array_equal(reader.vectors([0, 150]), x[[0, 150]])
    reader.close()


def test_repair_waits_for_the_writer_lock_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A repair never commits while another handle may write: nothing is repaired, the report says why."""
    from retrieval.cli import main

    monkeypatch.setattr(files, "BLOCK", 4_096)
    path = tmp_path / "c"
    _two_segments(path)
    entry = json.loads((path / "manifest.json").read_text())["segments"][0]
    vectors = path / entry["name"] / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[8_200:8_264] = bytes(b ^ 0xA5 for b in data[8_200:8_264])
    vectors.write_bytes(bytes(data))
    writer = Collection.open(path, limits=Limits(merge_factor=1_000, verify_on_open_bytes=0))
    try:
        report = verify_path(path, repair=True)
        assert not report.ok and not report.repaired
        assert any("nothing was repaired" in n and "open for writing" in n for n in report.notes), (
            report.notes
        )
        capsys.readouterr()
        assert main(["check", str(path), "--repair"]) == 1
        assert "nothing was repaired" in capsys.readouterr().out
    finally:
        writer.close()
    assert verify_path(path, repair=True).repaired
