"""The last blocks of CLIP / SigLIP vision towers trained on their locked prefix's cached output."""

from __future__ import annotations

import pytest
import torch

from retrieval.config import ModelConfig
from retrieval.model import load_model
from retrieval.train import train
from retrieval.train.frozen import training_data
from retrieval.train.prefix import PrefixImageFeatures, tower_split
from retrieval.train.setup import read_data

from support.hf import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny_dual(request, tmp_path_factory):
    save = save_tiny_clip if request.param == "clip" else save_tiny_siglip
    return save(tmp_path_factory.mktemp(request.param))


def test_every_split_gives_the_towers_own_features(tiny_dual):
    model = load_model(str(tiny_dual), device="cpu").eval()
    tower = model.image_tower
    pixels = torch.randn(3, 3, *tower.image_transform()(_image()).shape[1:])
    with torch.no_grad():
        whole = tower(pixels)  # [3, D]
        for split in range(len(tower.blocks()) + 1):
            rows = tower.encode_prefix(pixels, split)
            torch.testing.assert_close(tower.forward_suffix(rows, split), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block index between 0 and 2"):
        tower.encode_prefix(pixels, 3)


def test_split_point_of_partly_unfrozen_towers(tiny_dual):
    model = load_model(str(tiny_dual), device="cpu")
    assert tower_split(model) is None  # nothing of it trains
    model.set_training(lock_image=True, unfreeze_image_layers=1)
    assert tower_split(model) == 1
    model.set_training(lock_image=False, unfreeze_image_layers=0)
    assert tower_split(model) is None  # the patch embedding trains: it runs whole


def test_fine_tuning_the_last_block_runs_on_the_cached_prefix(tiny_dual, dataset, tmp_path):
    from retrieval.config import TrainConfig

    config = TrainConfig(
        train_data=str(dataset["train"]),
        val_data=str(dataset["val"]),
        out_dir=str(tmp_path / "run"),
        init_model=str(tiny_dual),
        model=ModelConfig(lock_image=True, lock_text=True, unfreeze_image_layers=1),
        batch_size=8,
        epochs=1,
        hard_negatives=False,
        checkpoint_every=0,
        progress=False,
        runtime="torch",
        feature_cache=False,
    )
    model = load_model(str(tiny_dual), device="cpu").set_training(lock_image=True, unfreeze_image_layers=1)
    pairs, *_ = read_data(config)
    _, _, _, image_cache = training_data(config, model, pairs, torch.device("cpu"))
    assert isinstance(image_cache, PrefixImageFeatures) and image_cache.split == 1
    before = {n: p.detach().clone() for n, p in model.image_tower.named_parameters()}
    result = train(config)
    assert result.steps > 0 and len(result.phases) == 1  # a given model trains as configured, in one phase
    trained = load_model(str(result.run_dir / "final"), device="cpu")
    changed = {n for n, p in trained.image_tower.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(
        ".layers.1." in n or ".layer.1." in n or "post_layernorm" in n or "head" in n or "projection" in n
        for n in changed
    ), changed


def _image():
    from PIL import Image

    return Image.new("RGB", (40, 40), "white")
