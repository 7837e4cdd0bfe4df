"""Segments: saves write only the change, many segments answer like one, merges, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered, exact_topk, recall

from indexes import Collection, Limits, compaction, persist
from indexes.compaction import SegmentSize
from indexes.limits import DEFAULT_LIMITS

D = 16


def _files(path: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (inode, size, mtime_ns) of every file."""
    out = {}
    for p in path.rglob("*"):
        if p.is_file() and p.name != ".writer.lock":
            st = p.stat()
            out[str(p.relative_to(path))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("spec", ["Flat", "HNSW32", "IVF16,Flat"])
def test_save_writes_only_the_change(tmp_path: Path, spec: str) -> None:
    x = clustered(8_000, D, seed=1)
    path = tmp_path / "c"
    with Collection.create(path, D, index=spec) as coll:
        coll.add(x[:7_000], [{"i": i} for i in range(7_000)])
    before = _files(path)
    total = sum(size for _, size, _ in before.values())
    with Collection.open(path) as coll:
        coll.add(x[7_000:7_100], [{"i": i} for i in range(7_000, 7_100)])
        coll.remove(np.arange(0, 7_000, 700))
    after = _files(path)
    commit_point = (persist.MANIFEST, persist.COMMITTED)  # rewritten by every commit
    for name, stat in before.items():
        if name not in commit_point:
            assert after.get(name) == stat, f"{name} was rewritten or deleted"
    written = sum(size for name, (_, size, _) in after.items() if name not in before or name in commit_point)
    assert written < 0.05 * total, f"a small change wrote {written} of {total} bytes"
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 7_090 and len(coll.segments) == 2
        assert coll.get([7_050]) == [{"i": 7_050}] and 700 not in coll.ids()


@pytest.fixture()
def no_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Collection, "default_limits", Limits(merge_factor=1_000))


def test_many_segments_answer_like_one(tmp_path: Path, no_merges: None) -> None:
    x = clustered(4_000, D, seed=2)
    q = clustered(50, D, seed=3)
    meta = [{"g": i % 4} for i in range(4_000)]
    with Collection.create(tmp_path / "one", D, index="Flat") as one:
        one.add(x, meta)
    with Collection.create(tmp_path / "many", D, index="Flat") as many:
        for lo in range(0, 4_000, 500):
            many.add(x[lo : lo + 500], meta[lo : lo + 500])
            many.save()
        assert len(many.segments) == 8
    with (
        Collection.open(tmp_path / "one", read_only=True) as a,
        Collection.open(tmp_path / "many", read_only=True) as b,
    ):
        for where in (None, {"g": 1}):
            sa, ia = a.search(q, 10, where=where)
            sb, ib = b.search(q, 10, where=where)
            np.testing.assert_allclose(sa, sb, rtol=1e-6)
            assert (ia == ib).mean() > 0.99  # identical but for exact ties
        _, truth = exact_topk(q, x, 10)
        assert recall(b.search(q, 10)[1], truth) == 1.0


@pytest.mark.parametrize("spec", ["HNSW32", "IVF16,Flat", "IVF16,PQ8x4"])
def test_ann_over_segments_meets_recall(tmp_path: Path, spec: str, no_merges: None) -> None:
    x = clustered(6_000, D, seed=4)
    q = clustered(100, D, seed=5)
    with Collection.create(tmp_path / "c", D, index=spec) as coll:
        for lo in range(0, 6_000, 750):
            coll.add(x[lo : lo + 750])
            coll.save()
        coll.tune(queries=q)
        _, found = coll.search(q, 10)
        assert len(coll.segments) >= 2
    assert recall(found, exact_topk(q, x, 10)[1]) >= 0.95


def test_compact_merges_and_keeps_everything(tmp_path: Path, no_merges: None) -> None:
    x = clustered(3_000, D, seed=6)
    with Collection.create(tmp_path / "c", D, index="HNSW32") as coll:
        for lo in range(0, 3_000, 300):
            coll.add(x[lo : lo + 300], [{"i": i, "odd": i % 2} for i in range(lo, lo + 300)])
            coll.save()
        coll.remove(np.arange(0, 3_000, 7))
        coll.save()
        ids, got = coll.ids(), coll.get(coll.ids())
        vecs = coll.vectors(ids)
        q = x[1:40]
        before = coll.search(q, 5, where={"odd": 1})
        assert coll.compact(force=True)
        assert len(coll.segments) == 1 and coll.info()["tombstones"] == 0
        assert coll.ids().tolist() == ids.tolist() and coll.get(ids) == got
        np.testing.assert_array_equal(coll.vectors(ids), vecs)
        after = coll.search(q, 5, where={"odd": 1})
        np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
        assert coll.compact(force=True) == [], "nothing left to merge"
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.ids().tolist() == ids.tolist() and coll.verify().ok


def test_merge_policy() -> None:
    factor = DEFAULT_LIMITS.merge_factor
    small = [SegmentSize(1_000, 0)] * factor
    assert compaction.plan(small, max_rows=10**9) == [(0, factor)]
    assert compaction.plan(small[:-1], max_rows=10**9) == [], "one short of a full tier: no merge"
    big = [SegmentSize(10**6, 0), *small]
    assert compaction.plan(big, max_rows=10**9) == [(1, 1 + factor)], "a big segment is not rewritten"
    deleted = [SegmentSize(10**6, 0), SegmentSize(10_000, 4_000), SegmentSize(10**6, 0)]
    assert compaction.plan(deleted, max_rows=10**9) == [(1, 2)], (
        "a segment with many removed rows is rewritten"
    )
    capped = [SegmentSize(100_000, 0)] * factor
    assert compaction.plan(capped, max_rows=150_000) == [], "merges never exceed the segment cap"
    many = [SegmentSize(10**6 * (i + 1), 0) for i in range(DEFAULT_LIMITS.max_segments + 3)]
    runs = compaction.plan(many, max_rows=10**12)
    assert len(many) - sum(hi - lo - 1 for lo, hi in runs) <= DEFAULT_LIMITS.max_segments
    assert compaction.plan(small[:3], 10**9, limits=Limits(merge_factor=3)) == [(0, 3)]
    assert compaction.plan([SegmentSize(10, 0)], 100, force=True) == []
    assert compaction.plan([SegmentSize(10, 1), SegmentSize(5, 0)], 100, force=True) == [(0, 2)]


def test_saves_merge_small_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Collection, "default_limits", Limits(merge_factor=4))
    x = clustered(1_000, D, seed=7)
    with Collection.create(tmp_path / "c", D, index="Flat") as coll:
        counts = []
        for lo in range(0, 1_000, 100):
            coll.add(x[lo : lo + 100])
            coll.save()
            counts.append(len(coll.segments))
        assert max(counts) < 4, f"segment counts after each save: {counts}"
        assert coll.ids().tolist() == list(range(1_000))


def test_small_memory_budget_keeps_unsaved_items_on_disk(tmp_path: Path) -> None:
    x = clustered(6_000, 32, seed=8)
    path = tmp_path / "c"
    coll = Collection.create(path, 32, index="Flat", memory_budget="256KB")
    for lo in range(0, 6_000, 500):
        coll.add(x[lo : lo + 500], [{"i": i} for i in range(lo, lo + 500)])
    info = coll.info()
    assert info["segments"] >= 10, "the buffer went to disk as segments before any save"
    assert info["unsaved_items"] * (32 * 4 + 8) <= 256 * 1024 // 8
    _, found = coll.search(x[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]
    pending = {p.name for p in path.iterdir() if p.is_dir()}
    coll.close()  # not saved: the segments written meanwhile are discarded
    assert not any((path / name).exists() for name in pending)
    with Collection.open(path) as coll:
        assert len(coll) == 0
        for lo in range(0, 6_000, 500):
            coll.add(x[lo : lo + 500], [{"i": i} for i in range(lo, lo + 500)])
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 6_000 and coll.get([5_999]) == [{"i": 5_999}]
        np.testing.assert_array_equal(coll.vectors([4_321]), x[4_321:4_322])


def test_explicit_ids(tmp_path: Path) -> None:
    x = clustered(10, D, seed=9)
    with Collection.create(tmp_path / "c", D, index="Flat") as coll:
        assert coll.add(x[:3], ids=[5, 7, 100]).tolist() == [5, 7, 100]
        assert coll.add(x[3:4]).tolist() == [101], "ids continue above the largest one given"
        with pytest.raises(ValueError, match="strictly ascending and >= 102"):
            coll.add(x[4:6], ids=[50, 200])
        with pytest.raises(ValueError, match="strictly ascending"):
            coll.add(x[4:6], ids=[300, 300])
        with pytest.raises(ValueError, match="ids has 1 entries but 2 vectors"):
            coll.add(x[4:6], ids=[300])
        assert coll.ids().tolist() == [5, 7, 100, 101]


def test_failed_remove_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(20, D, seed=10)
    with Collection.create(tmp_path / "c", D, index="Flat") as coll:
        coll.add(x[:10], [{"i": i} for i in range(10)])
        coll.save()
        coll.add(x[10:], [{"i": i} for i in range(10, 20)])
        from indexes.metadata import MetadataStore

        def broken(self, ids):
            raise OSError("metadata store unavailable")

        monkeypatch.setattr(MetadataStore, "delete", broken)
        with pytest.raises(OSError, match="unavailable"):
            coll.remove([1, 2, 15])  # ids in a segment and in the unsaved buffer
        monkeypatch.undo()
        assert len(coll) == 20 and coll.get([1, 15]) == [{"i": 1}, {"i": 15}]
        assert coll.info()["tombstones"] == 0


def test_filter_cache_is_bounded(tmp_path: Path) -> None:
    x = clustered(300, D, seed=11)
    with Collection.create(tmp_path / "c", D, index="HNSW32") as coll:
        coll.add(x, [{"i": i} for i in range(300)])
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        coll.limits = Limits(exact_filter_max=0)  # force the index path, which builds selectors
        for i in range(200):
            coll.search(x[:1], 3, where={"i": {"gte": i}})
        assert len(coll._filters) <= 64


def test_a_buffer_emptied_by_removals_leaves_every_id_reachable(tmp_path: Path) -> None:
    """An index="auto" re-choice flushes the buffer: one whose rows were all removed writes nothing."""
    x = clustered(12, 8, seed=5)
    path = tmp_path / "c"
    with Collection.create(path, 8, index="auto") as coll:
        coll.add(x[:5])
        coll.save()
        coll.remove([0, 1, 2, 3])
        coll.add(x[5:8])
        coll.remove([5, 6, 7])
        coll.save()  # the count fell to a quarter: the index is chosen again, the buffer flushed first
        assert all(s["rows"] for s in coll.segments), coll.segments
        new = coll.add(x[8:12])
        assert coll.get(new) == [{}] * 4
        np.testing.assert_array_equal(coll.vectors(new), x[8:12])
        coll.remove(new[:1])
    with Collection.open(path, read_only=True) as coll:
        assert coll.ids().tolist() == [4, 9, 10, 11]
        np.testing.assert_array_equal(coll.vectors([4, 11]), x[[4, 11]])
        assert coll.search(x[11], 1)[1][0, 0] == 11


def test_zero_row_segments_written_earlier_are_read_and_dropped(tmp_path: Path) -> None:
    """Collections holding an empty segment between others (as earlier versions could write) work."""
    import json

    from indexes.segment import write_segment
    from indexes.template import Template

    x = clustered(8, 8, seed=6)
    path = tmp_path / "c"
    with Collection.create(path, 8, index="Flat", limits=Limits(merge_factor=1_000)) as coll:
        coll.add(x[:4])
        coll.save()
        coll.add(x[4:])
    manifest = json.loads((path / "manifest.json").read_text())
    empty = write_segment(
        path, "s000003-0000abcd", np.zeros(0, np.int64), np.zeros((0, 8), np.float32), None,
        Template("Flat", 8, "ip"), texts=[],
    )  # fmt: skip
    manifest["segments"].insert(1, empty)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with Collection.open(path, read_only=True) as coll:
        assert coll.get([6]) == [{}] and coll.ids().tolist() == list(range(8))
        np.testing.assert_array_equal(coll.vectors([0, 7]), x[[0, 7]])
        assert coll.verify().ok
    with Collection.open(path) as coll:
        coll.remove([6])
        coll.add(x[:1])
    with Collection.open(path, read_only=True) as coll:
        assert all(s["rows"] for s in coll.segments), "the next save drops the empty segment"
        assert coll.ids().tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
