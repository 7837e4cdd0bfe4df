"""Collections written in format 1 open, search, convert on the first writable open, and merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import exact_topk, recall

from indexes import Collection

DATA = Path(__file__).parent / "data" / "format1"
CASES = {"Flat": ("Flat", 120), "HNSW32": ("HNSW32", 200), "IVF4_Flat": ("IVF4,Flat", 300)}


def _vectors(n: int) -> np.ndarray:
    """The vectors the format-1 fixtures were written with (see data/format1/README.md)."""
    rng = np.random.default_rng(n)
    centres = rng.standard_normal((8, 8))
    x = centres[rng.integers(0, 8, n)] + 0.35 * rng.standard_normal((n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(params=sorted(CASES))
def old(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str, np.ndarray]:
    path = tmp_path / request.param
    shutil.copytree(DATA / request.param, path)
    spec, n = CASES[request.param]
    return path, spec, _vectors(n)


def test_format1_opens_read_only_as_it_is(old: tuple[Path, str, np.ndarray]) -> None:
    path, spec, x = old
    before = sorted(p.name for p in path.rglob("*"))
    live = np.array([i for i in range(len(x)) if i % 10], dtype=np.int64)
    with Collection.open(path, read_only=True) as coll:
        assert (
            coll.index_spec == spec and coll.fingerprint == "model-v1" and coll.info()["format_version"] == 1
        )
        assert coll.ids().tolist() == live.tolist()
        np.testing.assert_array_equal(coll.vectors(live[:5]), x[live[:5]])
        assert coll.get([1, 2]) == [{"i": 1, "g": "b"}, {"i": 2, "g": "c"}]
        _, found = coll.search(x[live[:20]], 5)
        assert not np.isin(found, np.arange(0, len(x), 10)).any(), "removed ids never come back"
        assert recall(found, live[exact_topk(x[live[:20]], x[live], 5)[1]]) >= 0.9
        _, found = coll.search(x[:5], 3, where={"g": "a"})
        assert all(i % 3 == 0 for i in found.ravel())
        assert coll.verify().ok
    assert sorted(p.name for p in path.rglob("*")) == before, "a read-only open changes nothing"


def test_format1_converts_on_writable_open(old: tuple[Path, str, np.ndarray]) -> None:
    path, _, x = old
    data_files = {p.name: p.read_bytes() for p in next(path.glob("v*")).iterdir()}
    with Collection.open(path) as coll:
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["format_version"] == 2 and manifest["segments"][0]["files"]["vectors.npy"]["crc32"]
        assert {p.name: p.read_bytes() for p in next(path.glob("v*")).iterdir()} == data_files, (
            "no data rewritten"
        )
        n = len(coll)
        extra = _vectors(40)
        new = coll.add(extra, [{"i": 1000 + i, "g": "new"} for i in range(40)])
        assert new[0] == len(x), "ids continue after the old ones"
        coll.remove([1, 2])
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == n + 38 and coll.verify().ok
        assert coll.get([int(new[0])]) == [{"i": 1000, "g": "new"}]
        _, found = coll.search(extra[:3], 1)
        assert found[:, 0].tolist() == new[:3].tolist()
        assert 1 not in coll.ids()
    with Collection.open(path) as coll:
        coll.compact(force=True)  # the old data folder becomes an ordinary segment
        assert len(coll.segments) == 1 and not list(path.glob("v*"))
        _, found = coll.search(x[3:4], 1)
        assert found[0, 0] == 3


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
@pytest.mark.parametrize(
    "name", ["index.faiss", "vectors.npy", "ids.npy", "metadata.sqlite", "tombstones.npy"]
)
def test_damaged_format1_files_are_named(
    old: tuple[Path, str, np.ndarray], name: str, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Format 1 kept no checksums: a damaged file still gets an error naming it, never a raw FAISS,
    SQLite or numpy error, and `retrieval check` reports it without a traceback."""
    from indexes.files import DamagedFileError
    from indexes.verify import verify_path
    from retrieval.cli import main

    path, _, _ = old
    file = next(path.glob("v*")) / name
    data = bytearray(file.read_bytes())
    if damage == "flipped":
        for i in range(min(len(data), 200)):
            data[i] ^= 0xA5
    else:
        data = data[: len(data) // 2]
    file.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=name):
        Collection.open(path, read_only=True).close()
    report = verify_path(path)
    assert not report.ok and any(name in p.file for p in report.problems), report.summary()
    capsys.readouterr()
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert name in out and "Traceback" not in out + err
