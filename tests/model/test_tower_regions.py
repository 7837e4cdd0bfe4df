"""The region part of the EfficientNet-Lite towers: the second-to-last stage's map averaged over a grid
of image regions (``model.image_regions``), equal to adaptive average pooling, carried through the
locked prefix at every split, saved and loaded, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval.config import RECIPE_MODEL, ModelConfig
from retrieval.model import TwinEncoder, build_model
from retrieval.towers.base import tower_fingerprint
from retrieval.towers.efficientnet import EfficientNetLiteImageTower, build_efficientnet_lite


@pytest.mark.parametrize("regions", [2, 3, 4])
@pytest.mark.parametrize("side", [64, 100, 224])  # maps of 2, 4 and 7 cells a side: 7 does not divide
def test_the_region_part_equals_adaptive_average_pooling_of_its_stage(regions, side):
    torch.manual_seed(0)
    tower = EfficientNetLiteImageTower("lite0", side, regions=regions).eval()
    plain = EfficientNetLiteImageTower("lite0", side).eval()
    plain.load_state_dict(tower.state_dict())  # no weights of its own
    pixels = torch.randn(2, 3, side, side)
    with torch.no_grad():
        features = tower(pixels)
        maps, _, _ = plain._run_stages(plain._stem(pixels), 0)
        stage = maps[1]  # the second-to-last stage's map [B, C, h, w]
        want = F.layer_norm(F.adaptive_avg_pool2d(stage, regions).flatten(1), (tower.region_size,))
        base = plain(pixels)
    assert tower.parts == (*plain.parts, regions * regions * stage.shape[1])
    assert tower.output_dim == plain.output_dim + tower.region_size
    torch.testing.assert_close(features[:, : plain.output_dim], base)
    torch.testing.assert_close(features[:, plain.output_dim :], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("colour", [0, 4])
def test_the_locked_prefix_carries_the_region_part_at_every_split(colour):
    torch.manual_seed(0)
    tower = EfficientNetLiteImageTower("lite0", 96, colour_levels=colour, regions=2).eval()
    pixels = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        full = tower(pixels)
        for split in range(len(tower.stages) + 1):
            rows = tower.encode_prefix(pixels, split)
            torch.testing.assert_close(tower.forward_suffix(rows, split), full, rtol=1e-4, atol=1e-4)


def test_the_region_part_tells_where_a_shape_lies():
    """A glyph in the top-left corner and the same glyph in the bottom-right: the pooled averages
    barely tell them apart, the regions do."""
    tower = build_efficientnet_lite("lite0", 128, regions=2).eval()
    a = torch.ones(1, 3, 128, 128)
    a[:, :, 16:48, 16:48] = -1.0  # a dark square on white (normalised pixels)
    b = torch.flip(a, dims=(2, 3))
    with torch.no_grad():
        fa, fb = tower(torch.cat([a, b]))
    stage_average = slice(tower.parts[0], tower.parts[0] + tower.parts[1])
    region = slice(tower.output_dim - tower.region_size, tower.output_dim)
    assert F.cosine_similarity(fa[stage_average], fb[stage_average], dim=0) > 0.95
    assert F.cosine_similarity(fa[region], fb[region], dim=0) < 0.5


def test_the_fingerprint_names_the_regions_only_when_on():
    tower = EfficientNetLiteImageTower("lite0", 64, regions=2)
    plain = EfficientNetLiteImageTower("lite0", 64)
    plain.load_state_dict(tower.state_dict())
    assert "regions" not in plain.preprocess_config() and tower.preprocess_config()["regions"] == 2
    assert tower_fingerprint(tower) != tower_fingerprint(plain)


def test_a_model_with_regions_saves_and_loads_with_them(tmp_path):
    config = RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64", image_regions=2)
    model = build_model(config, device="cpu").eval()
    assert model.image_tower.regions == 2
    model.save(tmp_path / "m")
    loaded = TwinEncoder.load(tmp_path / "m", device="cpu").eval()
    assert loaded.config.image_regions == 2 and loaded.image_tower.regions == 2
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_features(pixels), model.image_features(pixels))
    saved = config.to_dict()
    saved.pop("image_regions")  # a model saved before the field existed
    assert ModelConfig.from_dict(saved).image_regions == 0


def test_bad_region_grids_are_refused_with_the_value():
    for bad in (-1, 1, 5, True, 2.0):
        with pytest.raises(ValueError, match=r"image_regions must be 0 .* received"):
            ModelConfig(image_tower="efficientnet-lite0", image_regions=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"regions must be 0 .* received"):
            EfficientNetLiteImageTower("lite0", 64, regions=bad)  # type: ignore[arg-type]


def test_other_towers_ignore_image_regions_like_other_towers_fields():
    from support.tiny import tiny_config

    plain = build_model(tiny_config("cnn", "gru"), ["a red car"], device="cpu")
    model = build_model(tiny_config("cnn", "gru", image_regions=2), ["a red car"], device="cpu")
    assert model.image_tower.output_dim == plain.image_tower.output_dim
