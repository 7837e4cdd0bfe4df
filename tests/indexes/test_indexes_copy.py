"""Copying collections between a local folder and Milvus (Lite here; a real server in the slow suite)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered
from milvus_support import unique_name

from indexes import Collection, copy_collection, create_collection, open_collection

D = 16


class Interrupt(Exception):
    pass


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, np.ndarray]:
    """A local collection of 250 items whose ids have gaps (some removed), fingerprint "fpS"."""
    path = str(tmp_path / "src")
    x = clustered(260, D, seed=21)
    with create_collection(path, D, index="Flat", fingerprint="fpS") as coll:
        coll.add(x, [{"i": i, "tag": ["a", "b"][i % 2]} for i in range(260)])
        coll.remove(np.r_[np.arange(3, 10), [255, 256, 257]])  # gaps, and the largest ids gone
    return path, x


def _same(src: str, dst: str) -> None:
    with open_collection(src, read_only=True) as a, open_collection(dst, read_only=True) as b:
        ids = a.ids()
        np.testing.assert_array_equal(b.ids(), ids)
        assert len(b) == len(a) == ids.size
        np.testing.assert_array_equal(b.vectors(ids), a.vectors(ids))
        assert b.get(ids) == a.get(ids)
        assert (b.dim, b.metric, b.fingerprint) == (a.dim, a.metric, a.fingerprint)
        q = a.vectors(ids[:4])
        np.testing.assert_array_equal(
            b.search(q, 5, where={"tag": "a"})[1], a.search(q, 5, where={"tag": "a"})[1]
        )


def test_local_to_milvus_keeps_ids_metadata_and_fingerprint(source, lite_db: Path) -> None:
    src, _ = source
    dst = f"milvus-lite://{lite_db}/{unique_name('copy')}"
    report = copy_collection(src, dst, batch=64)
    assert (report.total, report.copied, report.already_there) == (250, 250, 0)
    _same(src, dst)
    with open_collection(dst) as coll:
        assert coll.add(clustered(1, D)).tolist() == [260], "ids the source used are never handed out again"
    with pytest.raises(ValueError, match="lacks"):
        copy_collection(src, dst)  # the destination has moved on: no longer a copy


def test_an_interrupted_copy_finishes_on_rerun(source, lite_db: Path) -> None:
    src, _ = source
    dst = f"milvus-lite://{lite_db}/{unique_name('resume')}"
    seen: list[int] = []

    def stop_after_two(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        copy_collection(src, dst, batch=50, progress=stop_after_two)
    with open_collection(dst, read_only=True) as coll:
        assert len(coll) == 100
    report = copy_collection(src, dst, batch=50)
    assert (report.already_there, report.copied, report.total) == (100, 150, 250)
    _same(src, dst)
    assert copy_collection(src, dst).copied == 0, "a finished copy re-runs as a no-op"


def test_copy_refuses_a_destination_that_is_not_a_copy(source, lite_db: Path) -> None:
    src, x = source
    other = f"milvus-lite://{lite_db}/{unique_name('other')}"
    with create_collection(other, D, fingerprint="fpOther") as coll:
        coll.add(x[:2])
    with pytest.raises(ValueError, match="fingerprint 'fpOther' \\(source: 'fpS'\\)"):
        copy_collection(src, other)
    extra = f"milvus-lite://{lite_db}/{unique_name('extra')}"
    with create_collection(extra, D, fingerprint="fpS") as coll:
        coll.add(x[:1], ids=[5])  # id 5 was removed from the source
    with pytest.raises(ValueError, match=r"holds 1 id\(s\) the source .* lacks"):
        copy_collection(src, extra)
    report = copy_collection(src, extra, overwrite=True)
    assert report.copied == 250 and report.already_there == 0
    with pytest.raises(ValueError, match="same location"):
        copy_collection(src, src)
    with pytest.raises(ValueError, match="batch must be an integer"):
        copy_collection(src, extra, batch=0)


def test_milvus_to_local(source, lite_db: Path, tmp_path: Path) -> None:
    src, _ = source
    middle = f"milvus-lite://{lite_db}/{unique_name('middle')}"
    copy_collection(src, middle)
    back = tmp_path / "back"
    if "ids" not in inspect.signature(Collection.add).parameters:
        with pytest.raises(
            NotImplementedError, match=r"needs Collection.add\(vectors, metadata, ids=\.\.\.\)"
        ):
            copy_collection(middle, back)
        assert not back.exists(), "nothing is created when the copy cannot keep ids"
        return
    copy_collection(middle, back)
    _same(middle, str(back))
    _same(src, str(back))


def test_a_damaged_local_source_is_not_copied(source, tmp_path: Path) -> None:
    from indexes.files import DamagedFileError

    src, _ = source
    vectors = next(Path(src).glob("s*/vectors.npy"))
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=r"vectors.npy.*nothing was copied"):
        copy_collection(src, str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
