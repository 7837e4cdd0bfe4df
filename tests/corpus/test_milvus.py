"""The corpus tools on a Milvus Lite collection: the same answers as on a local folder."""

from __future__ import annotations

from pathlib import Path

from indexes import create_collection
from retrieval.corpus import DedupConfig, MapConfig, draw_map, find_duplicates
from retrieval.corpus.groups import read_groups

from support.duplicates import make_collection, planted
from support.milvus import unique_name


def test_dedup_and_map_on_milvus_lite_equal_a_local_collection(lite_db: Path, tmp_path: Path) -> None:
    vectors, groups = planted(200, dim=16, groups=8, size=3, seed=4)
    metadata = [{"modality": "image", "path": f"/x/{i}.png", "n": i} for i in range(200)]
    location = f"milvus-lite://{lite_db}/{unique_name('dedup')}"
    with create_collection(location, dim=16, index="Flat") as coll:
        coll.add(vectors, metadata)
        coll.save()
    local = make_collection(tmp_path / "local", vectors, metadata)
    config = DedupConfig(threshold=0.95, k=2, progress=False)
    remote = find_duplicates(location, config, out=tmp_path / "remote-out")
    here = find_duplicates(local, config, out=tmp_path / "local-out")

    def members(folder: Path) -> list[list[int]]:
        return sorted(
            sorted(m["metadata"]["n"] for m in g["members"]) for g in read_groups(folder / "groups.jsonl")
        )

    assert members(tmp_path / "remote-out") == members(tmp_path / "local-out") == sorted(groups)
    assert remote.duplicates == here.duplicates == 16
    estimate = find_duplicates(location, config.replace(sample=50)).estimates[0]
    assert estimate.sample == 50 and 0 < estimate.rate < 0.5
    drawn = draw_map(location, tmp_path / "map.html", MapConfig(method="pca", progress=False), png=None)
    assert drawn.points == 200
