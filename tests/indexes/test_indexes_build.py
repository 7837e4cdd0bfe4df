"""Bulk builds from embedding shards: layouts, metadata, serial == parallel == Ray, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import clustered

from indexes import Collection, build
from indexes.build import build_collection, discover_shards

D = 16


def _clip_layout(root: Path, sizes: list[int], text_sizes: list[int]) -> np.ndarray:
    """img_emb/ (float16 in the last shard, as clip-retrieval writes) + metadata/ parquet, and text_emb/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = clustered(sum(sizes) + sum(text_sizes), D, seed=50)
    start = 0
    for kind, stem, meta_dir, parts in (
        ("img", "img_emb", "metadata", sizes),
        ("text", "text_emb", "text_metadata", text_sizes),
    ):
        (root / stem).mkdir(parents=True)
        (root / meta_dir).mkdir(parents=True)
        for i, n in enumerate(parts):
            block = x[start : start + n]
            np.save(
                root / stem / f"{stem}_{i}.npy", block.astype(np.float16) if i == len(parts) - 1 else block
            )
            rows = [
                {"image_path": f"{kind}/{start + j}.png", "caption": f"item {start + j}"} for j in range(n)
            ]
            pq.write_table(pa.Table.from_pylist(rows), root / meta_dir / f"{meta_dir}_{i}.parquet")
            start += n
    return x


def _signature(path: Path) -> list[tuple]:
    """Everything that must be equal between two builds of the same shards: file checksums in order."""
    manifest = json.loads((path / "manifest.json").read_text())
    out: list[tuple] = [(manifest["count"], manifest["next_id"], manifest["index_spec"])]
    if manifest["template"]:
        out.append(tuple(manifest["template"]["digest"]["crc32"]))
    for entry in manifest["segments"]:
        files = {name: tuple(d["crc32"]) for name, d in entry["files"].items()}
        index = tuple(entry["index"]["digest"]["crc32"]) if entry["index"] else None
        out.append((entry["rows"], entry["id_min"], entry["id_max"], tuple(sorted(files.items())), index))
    return out


def test_discover_layouts(tmp_path: Path) -> None:
    _clip_layout(tmp_path / "clip", [30, 20], [10])
    shards = discover_shards(tmp_path / "clip")
    assert [(Path(s.vectors).name, s.modality, s.rows) for s in shards] == [
        ("img_emb_0.npy", "image", 30),
        ("img_emb_1.npy", "image", 20),
        ("text_emb_0.npy", "text", 10),
    ]
    assert Path(shards[2].metadata).name == "text_metadata_0.parquet"
    (tmp_path / "plain").mkdir()
    for i in (10, 2):
        np.save(tmp_path / "plain" / f"part{i}.npy", np.ones((3, 4), dtype=np.float32))
    (tmp_path / "plain" / "part2.jsonl").write_text("".join(json.dumps({"k": j}) + "\n" for j in range(3)))
    names = [Path(s.vectors).name for s in discover_shards(tmp_path / "plain")]
    assert names == ["part2.npy", "part10.npy"], "natural order"
    with pytest.raises(ValueError, match="no embedding shards"):
        discover_shards(tmp_path / "clip" / "metadata")
    np.save(tmp_path / "plain" / "part3.npy", np.ones((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="different dims"):
        discover_shards(tmp_path / "plain")
    np.save(tmp_path / "plain" / "part3.npy", np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="float32 or float16"):
        discover_shards(tmp_path / "plain")


@pytest.mark.parametrize("spec", ["IVF8,Flat", "HNSW32"])
def test_serial_and_parallel_builds_are_identical(
    tmp_path: Path, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collection, "_segment_max_rows", lambda self: 700)  # several segments per shard
    x = _clip_layout(tmp_path / "shards", [900, 800, 400], [500])
    serial = build_collection(
        tmp_path / "shards", tmp_path / "serial", index=spec, workers=1, fingerprint="m1"
    )
    parallel = build_collection(
        tmp_path / "shards", tmp_path / "parallel", index=spec, workers=2, fingerprint="m1"
    )
    assert serial.count == parallel.count == 2_600 and serial.segments == parallel.segments == 6
    assert _signature(tmp_path / "serial") == _signature(tmp_path / "parallel")
    with Collection.open(tmp_path / "parallel", read_only=True) as coll:
        assert coll.fingerprint == "m1" and coll.verify().ok
        assert coll.get([0, 2_100]) == [
            {"path": "img/0.png", "caption": "item 0", "modality": "image"},
            {"path": "text/2100.png", "caption": "item 2100", "modality": "text"},
        ]
        np.testing.assert_allclose(coll.vectors([2_099]), x[2_099:2_100], atol=1e-3)  # float16 shard
        np.testing.assert_array_equal(coll.vectors([5]), x[5:6])
        _, found = coll.search(x[:20], 1, where={"modality": "image"})
        assert (found[:, 0] == np.arange(20)).mean() >= 0.95


def test_build_resumes_after_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Collection, "_segment_max_rows", lambda self: 500)
    monkeypatch.setattr(build, "COMMIT_EVERY", 0.0)
    _clip_layout(tmp_path / "shards", [1_000, 1_000], [])
    real = build.segment_task
    calls = {"n": 0}

    def flaky(args: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(build, "segment_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1)
    monkeypatch.setattr(build, "segment_task", real)
    again = build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1)
    assert again.reused_segments == 2 and again.count == 2_000
    fresh = build_collection(tmp_path / "shards", tmp_path / "fresh", index="Flat", workers=1)
    assert _signature(tmp_path / "c") == _signature(tmp_path / "fresh")
    assert fresh.count == 2_000
    done = build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1)
    assert done.count == 2_000, "a finished build is not redone"
    with pytest.raises(FileExistsError, match="already exists"):
        build_collection(tmp_path / "shards", tmp_path / "c", index="HNSW32", workers=1)


def test_bad_shards_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    x = clustered(10, D, seed=51)
    x[3, 2] = np.nan
    np.save(tmp_path / "s" / "a.npy", x)
    with pytest.raises(ValueError, match=r"a.npy row 3 holds NaN"):
        build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)
    np.save(tmp_path / "s" / "a.npy", clustered(10, D, seed=51))
    (tmp_path / "s" / "a.jsonl").write_text('{"k": 1}\n')
    with pytest.raises(ValueError, match=r"has 1 lines but .* has 10 vectors"):
        build_collection(tmp_path / "s", tmp_path / "c2", index="Flat", workers=1)
    with pytest.raises(ValueError, match="engine must be one of"):
        build_collection(tmp_path / "s", tmp_path / "c3", engine="spark")


@pytest.mark.ray
@pytest.mark.slow  # starts a Ray cluster: tens of seconds
def test_ray_build_equals_local_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(Collection, "_segment_max_rows", lambda self: 700)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _clip_layout(tmp_path / "shards", [900, 600], [300])
    local = build_collection(tmp_path / "shards", tmp_path / "local", index="IVF8,Flat", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        remote = build_collection(tmp_path / "shards", tmp_path / "ray", index="IVF8,Flat", engine="ray")
    finally:
        ray.shutdown()
    assert remote.engine == "ray" and remote.count == local.count == 1_800
    assert _signature(tmp_path / "ray") == _signature(tmp_path / "local")


def test_index_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.cli import main

    _clip_layout(tmp_path / "shards", [300], [100])
    code = main(
        ["index", str(tmp_path / "shards"), "--out", str(tmp_path / "c"), "--workers", "1", "--index", "Flat"]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["count"] == 400
    assert main(["index", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_builds_are_identical_whatever_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained, compressed index (IVF-PQ) built with several FAISS threads in this process and by
    worker processes gives the same files, and a build leaves this process's thread count alone."""
    import faiss

    monkeypatch.setattr(Collection, "_segment_max_rows", lambda self: 700)
    _clip_layout(tmp_path / "shards", [1_200, 900], [])
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        build_collection(tmp_path / "shards", tmp_path / "serial", index="IVF8,PQ4x4", workers=1)
        assert faiss.omp_get_max_threads() == 2
        build_collection(tmp_path / "shards", tmp_path / "parallel", index="IVF8,PQ4x4", workers=2)
    finally:
        faiss.omp_set_num_threads(before)
    assert _signature(tmp_path / "serial") == _signature(tmp_path / "parallel")


def test_a_rebuild_from_changed_shards_never_keeps_stale_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards re-embedded with the same shapes are new content: nothing of the old build is reused."""
    (tmp_path / "s").mkdir()
    old, new = clustered(40, D, seed=52), clustered(40, D, seed=53)
    np.save(tmp_path / "s" / "a.npy", old)
    (tmp_path / "s" / "a.jsonl").write_text("".join(json.dumps({"v": 1}) + "\n" for _ in range(40)))
    build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)
    real_hash = build._content_hash
    monkeypatch.setattr(build, "_content_hash", lambda path: pytest.fail(f"{path} read again"))
    again = build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)
    assert again.count == 40, "unchanged shards: the finished build is kept, without reading them"
    monkeypatch.setattr(build, "_content_hash", real_hash)
    np.save(tmp_path / "s" / "a.npy", new)  # same shape, other vectors
    with pytest.raises(FileExistsError, match=r"a\.npy changed.*overwrite"):
        build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)
    build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1, overwrite=True)
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        np.testing.assert_array_equal(coll.vectors(np.arange(40)), new)
    (tmp_path / "s" / "a.jsonl").write_text("".join(json.dumps({"v": 2}) + "\n" for _ in range(40)))
    with pytest.raises(FileExistsError, match=r"a\.jsonl changed"):
        build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)


def test_an_interrupted_build_never_mixes_old_and_new_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collection, "_segment_max_rows", lambda self: 500)
    monkeypatch.setattr(build, "COMMIT_EVERY", 0.0)
    _clip_layout(tmp_path / "shards", [1_000, 1_000], [])
    real = build.segment_task
    calls = {"n": 0}

    def flaky(args: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(build, "segment_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1)
    monkeypatch.setattr(build, "segment_task", real)
    shard = tmp_path / "shards" / "img_emb" / "img_emb_0.npy"
    fresh = clustered(1_000, D, seed=54)
    np.save(shard, fresh)  # the first shard, already built, was re-embedded meanwhile
    with pytest.raises(FileExistsError, match=r"img_emb_0\.npy changed"):
        build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1)
    done = build_collection(tmp_path / "shards", tmp_path / "c", index="Flat", workers=1, overwrite=True)
    assert done.reused_segments == 0 and done.count == 2_000
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        np.testing.assert_array_equal(coll.vectors(np.arange(1_000)), fresh)


def test_a_missing_metadata_file_of_the_clip_layout_is_an_error(tmp_path: Path) -> None:
    _clip_layout(tmp_path / "shards", [30, 20], [10])
    (tmp_path / "shards" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(ValueError, match=r"metadata_1\.parquet is missing.*img_emb_1\.npy"):
        discover_shards(tmp_path / "shards")
    import shutil

    shutil.rmtree(tmp_path / "shards" / "metadata")  # no metadata at all: items carry their modality only
    shards = discover_shards(tmp_path / "shards")
    assert [s.metadata for s in shards[:2]] == [None, None] and shards[2].metadata is not None


def test_shard_vectors_whose_scores_would_overflow_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    x = clustered(10, D, seed=55)
    x[7] *= 1e19
    np.save(tmp_path / "s" / "a.npy", x)
    with pytest.raises(ValueError, match=r"a\.npy.*rows \[7\]"):
        build_collection(tmp_path / "s", tmp_path / "c", index="Flat", workers=1)
