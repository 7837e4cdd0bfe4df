"""`find_duplicates` / `retrieval dedup`: planted groups found, written, removed, estimated; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexes import Collection
from retrieval.cli import main
from retrieval.corpus import DedupConfig, EmptyCollectionError, find_duplicates
from retrieval.corpus.dedup import wilson
from retrieval.corpus.groups import read_groups

from support.duplicates import make_collection, planted

QUIET = DedupConfig(threshold=0.95, progress=False)


def _groups(folder: Path) -> list[list[int]]:
    return sorted(sorted(m["id"] for m in g["members"]) for g in read_groups(folder / "groups.jsonl"))


@pytest.mark.parametrize(
    "changes",
    [{}, {"exact": True}, {"k": 1, "batch_size": 7}, {"memory_items": 5}, {"policy": "greedy"}],
    ids=["index", "exact", "tiny-batches", "union-find-on-disk", "greedy"],
)
def test_planted_groups_are_found_and_written(dup_collection, tmp_path: Path, changes: dict) -> None:
    path, planted_groups = dup_collection
    result = find_duplicates(path, QUIET.replace(**changes), out=tmp_path / "out")
    assert _groups(tmp_path / "out") == sorted(planted_groups)  # ids are the row numbers here
    (found,) = result.found
    assert (found.items, found.groups, found.grouped, found.duplicates) == (60, 5, 15, 10)
    table = pq.read_table(tmp_path / "out" / "groups.parquet").to_pylist()
    assert len(table) == 15 and {row["group"] for row in table} == set(range(5))
    kept = [row for row in table if row["keep"]]
    assert len(kept) == 5 and all(row["score"] == pytest.approx(1.0) for row in kept)
    assert all(0.95 <= row["score"] <= 1.0 + 1e-6 for row in table)
    assert {"path", "caption", "quality", "modality", "id"} <= set(table[0])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["found"][0]["duplicates"] == 10 and summary["removed"] == 0
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 60  # nothing removed without remove=True


@pytest.mark.parametrize("keep", ["first", "quality", "largest"])
def test_remove_keeps_the_preferred_member_of_each_group(dup_collection, tmp_path: Path, keep: str) -> None:
    path, planted_groups = dup_collection
    if keep == "largest":  # captions: the longest one stays
        with Collection.open(path) as coll:
            ids = coll.ids()
            vectors, metadata = coll.vectors(ids), coll.get(ids)
            for meta in metadata:
                meta.update(modality="text", caption="x" * (1 + (int(meta["quality"]) * 3) % 11))
                del meta["path"]
        path = make_collection(tmp_path / "texts", vectors, metadata)
    result = find_duplicates(path, QUIET.replace(keep=keep), out=tmp_path / "out", remove=True)
    assert result.removed == 10
    with Collection.open(path, read_only=True) as coll:
        left = set(coll.ids().tolist())
        assert len(left) == 50
        for group in planted_groups:
            (survivor,) = left & set(group)
            if keep == "first":
                assert survivor == min(group)
            elif keep == "quality":
                quality = {i: float(i % 7) for i in group}
                best = max(quality.values())
                assert survivor == min(i for i in group if quality[i] == best)
            else:
                length = {i: 1 + ((i % 7) * 3) % 11 for i in group}
                assert survivor == min(i for i in group if length[i] == max(length.values()))


def test_greedy_and_components_differ_on_a_chain(tmp_path: Path) -> None:
    angle = np.deg2rad([0.0, 15.0, 30.0])  # 0~1 and 1~2 above cos 15deg, 0 and 2 apart
    vectors = np.stack([np.cos(angle), np.sin(angle), np.zeros(3)], 1).astype(np.float32)
    path = make_collection(tmp_path / "c", vectors)
    threshold = float(np.cos(np.deg2rad(16)))
    components = find_duplicates(path, QUIET.replace(threshold=threshold), out=tmp_path / "a")
    greedy = find_duplicates(path, QUIET.replace(threshold=threshold, policy="greedy"), out=tmp_path / "b")
    assert _groups(tmp_path / "a") == [[0, 1, 2]] and components.duplicates == 2
    assert _groups(tmp_path / "b") == [[0, 1]] and greedy.duplicates == 1
    scores = {m["id"]: m["score"] for g in read_groups(tmp_path / "a" / "groups.jsonl") for m in g["members"]}
    assert scores[2] < threshold  # joined through item 1: its score to the kept item says so


def test_images_and_captions_are_deduplicated_apart(tmp_path: Path) -> None:
    vectors, groups = planted(40, seed=3)
    metadata = [{"modality": "image" if i % 2 else "text", "caption": str(i)} for i in range(40)]
    path = make_collection(tmp_path / "c", vectors, metadata)
    result = find_duplicates(path, QUIET.replace(modality="both"), out=tmp_path / "out")
    by_modality = {f.modality: f for f in result.found}
    assert set(by_modality) == {"image", "text"}
    for group in _groups(tmp_path / "out"):
        assert len({i % 2 for i in group}) == 1  # never an image with a caption
    want = sum(
        len(s) - 1
        for g in groups
        for s in ([i for i in g if i % 2], [i for i in g if not i % 2])
        if len(s) > 1
    )
    assert result.duplicates == want
    images_only = find_duplicates(path, QUIET, out=tmp_path / "default")
    assert [f.modality for f in images_only.found] == ["image"]  # default: the images


def test_a_collection_of_one_modality_and_an_empty_one(tmp_path: Path) -> None:
    vectors, _ = planted(20)
    texts = make_collection(
        tmp_path / "t", vectors, [{"modality": "text", "caption": str(i)} for i in range(20)]
    )
    result = find_duplicates(texts, QUIET, out=tmp_path / "out")  # no images: the captions
    assert [f.modality for f in result.found] == ["text"] and result.groups == 5
    with pytest.raises(EmptyCollectionError, match=r"holds no images .*--modality texts"):
        find_duplicates(texts, QUIET.replace(modality="images"))
    empty = make_collection(tmp_path / "e", np.zeros((0, 16), np.float32))
    with pytest.raises(EmptyCollectionError, match="is empty"):
        find_duplicates(empty, QUIET)
    bare = make_collection(tmp_path / "bare", vectors)  # no metadata at all (retrieval index)
    assert find_duplicates(bare, QUIET).groups == 5


@pytest.mark.parametrize("value", [1.5, -0.2, 0, float("nan"), "high"])
def test_bad_thresholds_are_refused_naming_the_value(value: object) -> None:
    with pytest.raises(
        ValueError, match=f"threshold.*received {value!r}".replace("(", r"\(").replace(")", r"\)")
    ):
        DedupConfig(threshold=value)  # type: ignore[arg-type]


def test_keep_field_the_collection_lacks_is_refused(dup_collection) -> None:
    path, _ = dup_collection
    with pytest.raises(ValueError, match=r"no metadata field 'size'.*quality"):
        find_duplicates(path, QUIET.replace(keep="size"))


def test_sample_estimate_covers_the_true_rate(tmp_path: Path) -> None:
    vectors, _ = planted(2000, dim=24, groups=100, size=2, seed=5)  # 10 % of items have a copy
    path = make_collection(tmp_path / "c", vectors)
    result = find_duplicates(path, QUIET.replace(sample=400, k=4))
    (estimate,) = result.estimates
    assert estimate.sample == 400 and estimate.population == 2000
    assert estimate.low <= 0.10 <= estimate.high
    assert estimate.removal_share == pytest.approx(estimate.rate / 2)  # pairs: half of each goes
    assert estimate.nearest["99%"] > 0.95 and estimate.nearest["median"] < 0.9
    whole = find_duplicates(path, QUIET.replace(sample=5000, exact=True))  # the whole population: exact
    assert whole.estimates[0].rate == pytest.approx(0.10)
    assert whole.estimates[0].low == whole.estimates[0].high == pytest.approx(0.10)
    assert not list(tmp_path.glob("c-dedup"))  # a sample writes nothing


def test_wilson_interval_matches_the_textbook_value() -> None:
    low, high = wilson(10, 100)  # the 95 % score interval of 10 / 100 (Wilson 1927): 0.0552-0.1744
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)
    assert wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12)


def test_cli_dedup_writes_removes_and_estimates(dup_collection, tmp_path: Path, capsys) -> None:
    path, _ = dup_collection
    assert main(["dedup", str(path), "--threshold", "0.95", "--no-progress", "-q"]) == 0
    out = path.parent / "coll-dedup"  # the default folder beside the collection
    assert _groups(out) and (out / "groups.parquet").exists()
    assert "5 groups" in capsys.readouterr().out
    assert main(["dedup", "--sample", "30", str(path), "--threshold=0.95", "-q"]) == 0
    assert "sampled have a near-duplicate" in capsys.readouterr().out
    assert main(["dedup", str(path), "--threshold", "0.95", "--remove", "--keep", "quality", "-q"]) == 0
    with Collection.open(path, read_only=True) as coll:
        assert len(coll) == 50


def test_cli_dedup_errors(dup_collection, tmp_path: Path, capsys) -> None:
    path, _ = dup_collection
    assert main(["dedup", str(path), "--threshold", "1.5"]) == 2
    assert (
        "--threshold: must be a cosine between 0 (excluded) and 1; received '1.5'" in capsys.readouterr().err
    )
    assert main(["dedup", str(path)]) == 2  # the threshold is required
    capsys.readouterr()
    empty = make_collection(tmp_path / "empty", np.zeros((0, 8), np.float32))
    assert main(["dedup", str(empty), "--threshold", "0.9"]) == 3  # nothing to work on
    assert "is empty" in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "nope"), "--threshold", "0.9"]) == 1
    assert "no collection at" in capsys.readouterr().err
    assert main(["dedup", str(path), "--threshold", "0.9", "--sample", "5", "--remove"]) == 1
    assert "drop --sample" in capsys.readouterr().err
