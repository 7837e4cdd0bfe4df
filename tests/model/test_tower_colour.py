"""The colour histogram of the EfficientNet-Lite towers: equal to a dense reference, placed where the
colours are, carried through the locked prefix, saved and loaded with the model, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.config import RECIPE_MODEL, ModelConfig
from retrieval.model import TwinEncoder, build_model
from retrieval.towers.base import tower_fingerprint
from retrieval.towers.colour import ColourHistogram
from retrieval.towers.efficientnet import MEAN, STD, EfficientNetLiteImageTower


def _reference(pixels: torch.Tensor, levels: int, pool: int) -> np.ndarray:
    """Every pixel cell scored against every centre of the grid, a softmax over all of them, averaged."""
    rgb = pixels.double() * torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    rgb = rgb + torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    cells = F.avg_pool2d(rgb, pool).flatten(2).transpose(1, 2).numpy()  # [B, N, 3]
    grid = np.linspace(0.0, 1.0, levels)
    centres = np.array([(r, g, b) for r in grid for g in grid for b in grid])  # [K, 3]
    sigma = 0.5 / (levels - 1)
    logits = -((cells[:, :, None, :] - centres[None, None]) ** 2).sum(-1) / (2 * sigma**2)  # [B, N, K]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights.mean(1)  # [B, K]


@pytest.mark.parametrize(("levels", "pool", "side"), [(2, 1, 5), (3, 2, 8), (6, 4, 32), (8, 4, 30)])
def test_the_histogram_equals_a_dense_softmax_over_the_grid(levels, pool, side):
    torch.manual_seed(levels)
    pixels = torch.rand(3, 3, side, side) * 2.0 - 1.0  # normalised values of [0, 1] pixels and a bit beyond
    hist = ColourHistogram(levels, MEAN, STD, pool)(pixels)
    assert hist.shape == (3, levels**3) and hist.dtype == torch.float32
    np.testing.assert_allclose(hist.numpy(), _reference(pixels, levels, pool), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(hist.sum(1), torch.ones(3))


def _solid(rgb: tuple[int, int, int], side: int = 32) -> torch.Tensor:
    """One image of a single colour, normalised as the tower expects: ``[1, 3, side, side]``."""
    values = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
    return ((values - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).expand(
        1, 3, side, side
    )


def test_a_colour_lands_in_the_bin_of_its_nearest_centre():
    histogram = ColourHistogram(6, MEAN, STD)
    for rgb, (r, g, b) in [((255, 0, 0), (5, 0, 0)), ((0, 51, 255), (0, 1, 5)), ((250, 220, 188), (5, 4, 4))]:
        hist = histogram(_solid(rgb))[0]
        assert int(hist.argmax()) == r * 36 + g * 6 + b, rgb
        if rgb == (255, 0, 0):  # exactly on a centre: most of the mass, the rest on its neighbours
            assert float(hist.max()) > 0.6
    # two skin tones of the same drawing a step apart on the grid do not share their top bin
    light, medium = (histogram(_solid(c))[0] for c in ((250, 220, 188), (193, 154, 101)))
    assert int(light.argmax()) != int(medium.argmax())


def test_bad_levels_are_named():
    for bad in (1, 0, 17, True, 2.5):
        with pytest.raises(ValueError, match="2 to 16 levels"):
            ColourHistogram(bad, MEAN, STD)
    with pytest.raises(ValueError, match="pooling cell"):
        ColourHistogram(4, MEAN, STD, pool=0)


def test_the_tower_appends_the_histogram_as_its_last_normalised_part():
    torch.manual_seed(0)
    tower = EfficientNetLiteImageTower("lite0", 64, colour_levels=4).eval()
    plain = EfficientNetLiteImageTower("lite0", 64).eval()
    plain.load_state_dict(tower.state_dict())  # no weights of its own: the same state
    assert tower.parts == (*plain.parts, 64) and tower.output_dim == plain.output_dim + 64
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = tower(pixels)
        torch.testing.assert_close(features[:, : plain.output_dim], plain(pixels))
    colour = features[:, plain.output_dim :]
    want = F.layer_norm(ColourHistogram(4, MEAN, STD)(pixels).sqrt(), (64,))
    torch.testing.assert_close(colour, want)
    assert "colour_levels" not in plain.preprocess_config()
    assert tower.preprocess_config()["colour_levels"] == 4
    assert tower_fingerprint(tower) != tower_fingerprint(plain)  # never the same cached features


def test_images_differing_only_in_colour_differ_in_the_colour_part():
    tower = EfficientNetLiteImageTower("lite0", 64, colour_levels=6).eval()
    with torch.no_grad():
        a, b = tower(torch.cat([_solid((250, 220, 188), 64), _solid((106, 70, 47), 64)]))
    width = tower.parts[-1]
    cosine = F.cosine_similarity(a[-width:], b[-width:], dim=0)
    assert float(cosine) < 0.5


@pytest.mark.parametrize("levels", [0, 3])
def test_the_recipe_model_saves_and_loads_with_its_histogram(levels, tmp_path):
    config = RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64", colour_levels=levels)
    model = build_model(config, device="cpu").eval()
    assert model.image_tower.output_dim == 3184 + levels**3
    model.save(tmp_path / "m")
    loaded = TwinEncoder.load(tmp_path / "m", device="cpu").eval()
    assert loaded.config.colour_levels == levels
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_features(pixels), model.image_features(pixels))


def test_a_model_saved_before_the_histogram_loads_without_it():
    saved = RECIPE_MODEL.to_dict()
    saved.pop("colour_levels")  # the config of a model saved before the field existed
    assert ModelConfig.from_dict(saved).colour_levels == 0
    assert RECIPE_MODEL.colour_levels == 8  # the default recipe has it


def test_colour_levels_are_checked_with_the_tower():
    for bad in (-1, 1, 17, True):
        with pytest.raises(ValueError, match="colour_levels must be 0"):
            ModelConfig(image_tower="efficientnet-lite0", colour_levels=bad)


def test_other_towers_ignore_colour_levels_like_other_towers_fields():
    """The default recipe sets colour_levels=8; a user who switches its image tower to one without a
    histogram (model.image_tower=cnn) gets that tower as it always was, not an error."""
    from support.tiny import tiny_config

    config = tiny_config("cnn", "gru", colour_levels=6)
    plain = build_model(tiny_config("cnn", "gru"), ["a red car"], device="cpu")
    model = build_model(config, ["a red car"], device="cpu")
    assert model.image_tower.output_dim == plain.image_tower.output_dim
    assert model.image_tower.preprocess_config() == plain.image_tower.preprocess_config()
