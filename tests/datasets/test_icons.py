"""The Material Design Icons dataset builder: captions, families, split by family, render, cache."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

pytest.importorskip("material_design_icons_pack")

from PIL import Image

from retrieval.data import read_pairs
from retrieval.datasets import build_icons, icons_catalogue
from retrieval.datasets.icons import icon_family


def test_families_strip_variant_words():
    assert icon_family("account-alert-outline") == "account"
    assert icon_family("access-point-network-off") == "access-point"
    assert icon_family("bell-plus") == icon_family("bell-off-outline") == "bell"
    assert icon_family("outline") == "outline"  # one word is always kept


def test_catalogue_has_every_icon_and_no_family_crosses_splits():
    records = icons_catalogue()
    assert len(records) == 7447
    by_id = {r.id: r for r in records}
    assert by_id["account-alert-outline"].caption == "account alert outline"
    splits_of_family = defaultdict(set)
    for record in records:
        splits_of_family[record.family].add(record.split)
    assert all(len(s) == 1 for s in splits_of_family.values())
    counts = {split: sum(r.split == split for r in records) for split in ("train", "val", "test")}
    assert counts["test"] > 600 and counts["val"] > 600 and counts["train"] > 5500
    assert icons_catalogue() == records  # deterministic


def test_build_renders_manifests_and_is_cached(tmp_path):
    data = build_icons(tmp_path, size=24, limit=40, progress=False)
    assert data.rendered == 40
    assert sum(c["images"] for c in data.counts.values()) == 40
    rows = [json.loads(line) for line in data.train.read_text().splitlines()]
    assert rows and {"image", "caption", "id", "family", "split"} <= set(rows[0])
    pairs = read_pairs(data.train)
    assert len(pairs) == len(rows)
    with Image.open(pairs.images()[0]) as image:
        assert image.size == (24, 24) and image.mode == "RGB"
        assert image.getextrema() != ((255, 255),) * 3  # something was drawn
    again = build_icons(tmp_path, size=24, limit=40, progress=False)
    assert again.rendered == 0 and again.counts == data.counts
