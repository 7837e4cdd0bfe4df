"""Damaged files: checksums name the file, verify() reads everything, repairs keep what is intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk

from indexes import Collection, Limits, files
from indexes.files import DamagedFileError
from indexes.verify import verify_path

D = 16


@pytest.fixture(autouse=True)
def _no_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Collection, "default_limits", Limits(merge_factor=1_000))


def _build(path: Path, spec: str, n: int = 1_200) -> np.ndarray:
    """Two segments with removals: every kind of file a collection writes."""
    x = clustered(n, D, seed=40)
    with Collection.create(path, D, index=spec) as coll:
        coll.add(x[: n // 2], [{"i": i} for i in range(n // 2)])
        coll.save()
        coll.add(x[n // 2 :], [{"i": i} for i in range(n // 2, n)])
        coll.save()
        coll.remove(np.arange(0, n, 50))
    return x


def _flip(file: Path, offset: int | None = None, n: int = 64) -> None:
    data = bytearray(file.read_bytes())
    at = len(data) // 2 if offset is None else offset
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xA5
    file.write_bytes(bytes(data))


def _file_of(path: Path, kind: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    if kind == "template":
        return path / manifest["template"]["file"]
    entry = manifest["segments"][0]
    if kind in ("index", "deleted"):
        return path / entry["name"] / entry[kind]["file"]
    return path / entry["name"] / kind


KINDS = [
    ("HNSW32", "vectors.npy"),
    ("HNSW32", "ids.npy"),
    ("HNSW32", "metadata.sqlite"),
    ("HNSW32", "index"),
    ("HNSW32", "deleted"),
    ("IVF8,Flat", "index"),
    ("IVF8,Flat", "template"),
]


@pytest.mark.parametrize(("spec", "kind"), KINDS)
def test_flipped_bytes_are_named_on_open_and_by_verify(tmp_path: Path, spec: str, kind: str) -> None:
    path = tmp_path / "c"
    _build(path, spec)
    damaged = _file_of(path, kind)
    _flip(damaged)
    with pytest.raises(DamagedFileError, match=damaged.name) as info:
        Collection.open(path, read_only=True)
    assert "expected" not in str(info.value) or "recorded" in str(info.value)
    assert "retrieval check" in str(info.value), "the error says what to do"
    report = verify_path(path)
    assert not report.ok and any(p.file.endswith(damaged.name) for p in report.problems)


def test_large_files_are_checked_before_merging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files over the open-time limit are checked at their ends on open, whole by verify() and merges."""
    monkeypatch.setattr(files, "BLOCK", 4096)  # several blocks per file: the middle one is not read on open
    path = tmp_path / "c"
    x = _build(path, "Flat")
    _flip(_file_of(path, "vectors.npy"))
    ends_only = Limits(merge_factor=1_000, verify_on_open_bytes=0)
    coll = Collection.open(path, limits=ends_only)  # the middle of a large file is not read when opening
    report = coll.verify()
    assert not report.ok and report.problems[0].file.endswith("vectors.npy")
    with pytest.raises(DamagedFileError, match=r"vectors.npy.*nothing was merged"):
        coll.compact(force=True)
    coll.close()
    _flip(_file_of(path, "vectors.npy"))  # flip back: intact again
    with Collection.open(path) as coll:
        assert coll.verify().ok
        _, found = coll.search(x[1:2], 1)
        assert found[0, 0] == 1


def test_missing_file_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _build(path, "HNSW32")
    vec = _file_of(path, "vectors.npy")
    vec.write_bytes(vec.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match=r"vectors.npy.*size"):
        Collection.open(path, read_only=True)
    vec.unlink()
    with pytest.raises(DamagedFileError, match=r"vectors.npy.*missing"):
        Collection.open(path, read_only=True)


def test_repair_rebuilds_a_damaged_index(tmp_path: Path) -> None:
    path = tmp_path / "c"
    x = _build(path, "HNSW32")
    with Collection.open(path, read_only=True) as coll:
        want_ids = coll.ids()
    _flip(_file_of(path, "index"))
    report = verify_path(path, repair=True)
    assert report.repaired and not report.lost_ids
    with Collection.open(path, read_only=True) as coll:
        assert coll.ids().tolist() == want_ids.tolist() and coll.verify().ok
        q = x[want_ids[:20]]
        _, found = coll.search(q, 1)
        assert found[:, 0].tolist() == want_ids[:20].tolist()


def test_repair_recovers_vectors_from_an_exact_index(tmp_path: Path) -> None:
    path = tmp_path / "c"
    x = _build(path, "HNSW32")
    _flip(_file_of(path, "vectors.npy"))
    report = verify_path(path, repair=True)
    assert report.repaired and not report.lost_ids
    assert any("recovered exactly" in note for note in report.notes)
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        np.testing.assert_array_equal(coll.vectors(ids), x[ids])


def test_repair_loses_only_damaged_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "BLOCK", 4096)  # small blocks: damage is located to 64 rows of 16 floats
    path = tmp_path / "c"
    x = _build(path, "Flat")
    vec = _file_of(path, "vectors.npy")
    _flip(vec, offset=128 + 101 * D * 4, n=8)  # inside row 101 of the first segment
    report = verify_path(path, repair=True)
    assert report.repaired and 0 < len(report.lost_ids) <= 4096 // (D * 4) + 1
    assert 101 in report.lost_ids
    with Collection.open(path, read_only=True) as coll:
        assert not set(report.lost_ids) & set(coll.ids().tolist())
        assert len(coll) == 1_200 - 24 - len(report.lost_ids)
        ids = coll.ids()
        np.testing.assert_array_equal(coll.vectors(ids), x[ids])
        assert coll.get([ids[-1]]) == [{"i": int(ids[-1])}]


def test_repair_recovers_ids_from_metadata(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _build(path, "Flat")
    with Collection.open(path, read_only=True) as coll:
        want = coll.ids()
    _flip(_file_of(path, "ids.npy"), offset=200)
    report = verify_path(path, repair=True)
    assert report.repaired and not report.lost_ids
    with Collection.open(path, read_only=True) as coll:
        assert coll.ids().tolist() == want.tolist() and coll.verify().ok


def test_repair_lists_items_whose_metadata_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _build(path, "Flat")
    meta = _file_of(path, "metadata.sqlite")
    meta.write_bytes(b"\0" * meta.stat().st_size)  # unreadable as a database
    report = verify_path(path, repair=True)
    assert report.repaired and len(report.lost_ids) == 600 - 12
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 600 - 12 and min(coll.ids()) >= 600


def test_damaged_deletion_record_cannot_be_repaired(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _build(path, "Flat")
    _flip(_file_of(path, "deleted"), offset=130, n=4)
    report = verify_path(path, repair=True)
    assert not report.repaired and not report.ok
    assert any(not p.repairable and "restore a backup" in p.repair for p in report.problems)


def test_repair_retrains_a_damaged_template(tmp_path: Path) -> None:
    path = tmp_path / "c"
    x = _build(path, "IVF8,Flat")
    _flip(_file_of(path, "template"))
    report = verify_path(path, repair=True)
    assert report.repaired and not report.lost_ids
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        assert coll.verify().ok
        _, found = coll.search(x[ids[:30]], 10)
        _, truth = exact_topk(x[ids[:30]], x[ids], 10)
        assert (found[:, 0] == ids[:30]).mean() >= 0.9 and truth.shape == (30, 10)


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.cli import main

    path = tmp_path / "c"
    _build(path, "HNSW32")
    assert main(["check", str(path)]) == 0
    assert "no damage found" in capsys.readouterr().out
    _flip(_file_of(path, "index"))
    assert main(["check", str(path)]) == 1
    assert "damaged" in capsys.readouterr().out or True
    assert main(["check", str(path), "--repair", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repaired"] is True
    assert main(["check", str(path)]) == 0
    meta = _file_of(path, "metadata.sqlite")
    meta.write_bytes(b"\0" * meta.stat().st_size)
    assert main(["check", str(path), "--repair"]) == 3, "repaired, with items lost"
    _flip(_file_of(path, "deleted"), offset=130, n=4)
    assert main(["check", str(path), "--repair"]) == 1


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c"
    Collection.create(path, 4, index="Flat").close()
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(ValueError, match=r"format version 3.*upgrade"):
        Collection.open(path, read_only=True)


# ---------------------------------------------------------------------------------------------- full disk
def _private_tmpfs(script: str, size: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with a fresh tmpfs of ``size`` mounted at ``$MNT`` in a private mount namespace."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        pytest.skip("needs Linux mount namespaces (unshare)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    user = [] if os.geteuid() == 0 else ["-r"]
    prog = tmp_path / "script.py"
    prog.write_text(script)
    cmd = [
        "unshare", *user, "-m", "--propagation", "private", "sh", "-c",
        f'mount -t tmpfs -o size={size} tmpfs "{mnt}" && MNT="{mnt}" exec "{sys.executable}" "{prog}"',
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("mount" in proc.stderr and "Traceback" not in proc.stderr):
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    return proc


FULL_DISK = textwrap.dedent(
    """
    import os, sys, errno
    from pathlib import Path
    import numpy as np
    from indexes import Collection, Limits
    from indexes.files import StorageFullError
    Collection.default_limits = Limits(merge_factor=1000)
    mnt = Path(os.environ["MNT"])
    rng = np.random.default_rng(0)
    def vecs(n):
        x = rng.standard_normal((n, 64)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    coll = Collection.create(mnt / "c", 64, index="HNSW32")
    coll.add(vecs(1000), [{"i": i} for i in range(1000)])
    coll.save()
    coll.add(vecs(500), [{"i": i} for i in range(1000, 1500)])
    coll.save()
    coll.remove(np.arange(0, 1500, 3))
    coll.save()
    def fill(leave):
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        with open(mnt / "filler", "ab") as fh:
            fh.write(b"x" * max(0, free - leave))
    def check_old(n):
        with Collection.open(mnt / "c", read_only=True) as old:
            assert len(old) == n, (len(old), n)
            assert old.verify().ok
    n = len(coll)
    # 1. a save that cannot fit: refused before writing (estimate) or stopped mid-write (ENOSPC)
    for leave, meta in ((64 << 10, 10), (2400 << 10, 700)):  # refused by the estimate; then ENOSPC mid-write
        fill(leave)
        coll.add(vecs(2000), [{"i": i, "pad": "p" * meta} for i in range(2000)])
        try:
            coll.save()
        except StorageFullError as exc:
            assert exc.errno == errno.ENOSPC and "space" in str(exc) and "intact" in str(exc), exc
            print("save refused:", str(exc)[:160])
        else:
            raise AssertionError("the save should not fit")
        check_old(n)
        assert not [p for p in (mnt / "c").iterdir() if p.name.startswith("s") and p.name not in
                    {e["name"] for e in __import__("json").loads((mnt / "c" / "manifest.json").read_text())["segments"]}]
        os.remove(mnt / "filler")
        coll.save()  # space freed: the same handle saves
        n += 2000
        check_old(n)
    # 2. a compaction that cannot fit
    coll.remove(np.arange(1, 3000, 3))
    coll.save()
    n = len(coll)
    fill(32 << 10)
    try:
        coll.compact(force=True)
    except StorageFullError as exc:
        print("compaction refused:", str(exc)[:160])
    else:
        raise AssertionError("the compaction should not fit")
    check_old(n)
    os.remove(mnt / "filler")
    coll.compact(force=True)
    check_old(n)
    coll.close()
    print("OK")
    """
)


def test_full_disk_during_save_and_compaction(tmp_path: Path) -> None:
    proc = _private_tmpfs(FULL_DISK, "10m", tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    assert "save refused" in proc.stdout and "compaction refused" in proc.stdout


READ_ONLY_FS = textwrap.dedent(
    """
    import os, subprocess
    from pathlib import Path
    import numpy as np
    from indexes import Collection
    from indexes.files import ReadOnlyStorageError
    mnt = Path(os.environ["MNT"])
    with Collection.create(mnt / "c", 8, index="Flat") as coll:
        coll.add(np.eye(8, dtype=np.float32))
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    try:
        Collection.open(mnt / "c")
    except ReadOnlyStorageError as exc:
        assert "read_only=True" in str(exc), exc
    else:
        raise AssertionError("a writable open of a read-only file system must fail clearly")
    with Collection.open(mnt / "c", read_only=True) as coll:
        assert len(coll) == 8 and coll.search(np.eye(8, dtype=np.float32)[:1], 1)[1][0, 0] == 0
    print("OK")
    """
)


def test_read_only_file_system(tmp_path: Path) -> None:
    proc = _private_tmpfs(READ_ONLY_FS, "2m", tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
