"""Tags and keyword lists of a manifest as extra positives of their image."""

from __future__ import annotations

import json

import pytest

from retrieval.data import Pair, PairSet, read_pairs
from retrieval.train import train
from retrieval.train.sampling import plan_epoch
from retrieval.train.tags import parse_tags, with_tags


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        (None, []),
        ("cat, animal; pet | cat", ["cat", "animal", "pet"]),
        (["Cat", "cat ", "  big   cat"], ["Cat", "big cat"]),
        ('["a", "b, c"]', ["a", "b, c"]),
        ("[not json", ["[not json"]),
        ([["nested", "list"], 3, True, None], ["nested", "list", "3"]),
        ("  ,, ; ", []),
    ],
)
def test_tags_are_read_from_the_forms_manifests_hold(value, tags):
    assert parse_tags(value) == tags


def _pairs() -> PairSet:
    return PairSet(
        [
            Pair("a.png", "a red circle", "a", {"tags": "circle, red, shape", "group": "round"}),
            Pair("a.png", "circle in red", "a", {"tags": ["shape"]}),
            Pair("b.png", "a blue square", "b", {"tags": ["shape", "A Blue Square"]}),
            Pair("c.png", "a green cross", "c", {}),
        ],
        [("x.jsonl:9", "no caption")],
    )


def test_each_distinct_tag_of_an_image_becomes_one_pair():
    tagged, added = with_tags(_pairs(), "tags")
    extra = [(p.image_id, p.caption) for p in tagged.pairs[4:]]
    assert extra == [("a", "circle"), ("a", "red"), ("a", "shape"), ("b", "shape")]  # a caption is no tag
    assert added == 4 and all(p.metadata["tag"] for p in tagged.pairs[4:])
    assert tagged.pairs[:4] == _pairs().pairs and tagged.skipped == _pairs().skipped
    both, added = with_tags(_pairs(), "tags, group")
    assert ("a", "round") in [(p.image_id, p.caption) for p in both.pairs] and added == 5


def test_a_tags_column_no_pair_has_is_named():
    with pytest.raises(ValueError, match=r"no training pair has the tags field\(s\) \['keywords'\].*'tags'"):
        with_tags(_pairs(), "keywords")
    with pytest.raises(ValueError, match="names no field"):
        with_tags(_pairs(), " , ")


def test_training_adds_tag_pairs_and_validation_keeps_captions(dataset, tiny_model, tmp_path):
    rows = [json.loads(line) for line in dataset["train"].read_text().splitlines()]
    for row in rows:
        row["keywords"] = [row["color"], "shape"]
    manifest = dataset["train"].parent / "tagged.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from retrieval.config import TrainConfig

    config = TrainConfig(
        train_data=str(manifest),
        val_data=str(dataset["val"]),
        out_dir=str(tmp_path / "run"),
        model=tiny_model,
        batch_size=8,
        epochs=1,
        hard_negatives=False,
        checkpoint_every=0,
        progress=False,
        tags_column="keywords",
        multi_positive=True,
    )
    images = len(read_pairs(str(manifest)).images())
    result = train(config)
    # every image got its colour and "shape" as two more pairs
    assert result.steps == len(plan_epoch(len(rows) + 2 * images, 8, 1, 0, 1))
    assert result.steps > len(plan_epoch(len(rows), 8, 1, 0, 1))
    assert result.best_metrics["t2i/n_queries"] == len(read_pairs(str(dataset["val"])))
