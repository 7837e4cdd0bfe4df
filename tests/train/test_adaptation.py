"""Partial adaptation of a pretrained image tower: the locked prefix cached once, the suffix trained,
heads first and the adapted model kept only when validation says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from retrieval.config import TrainConfig
from retrieval.encoding import FeatureCache
from retrieval.model import TwinEncoder, build_model
from retrieval.towers.base import prefix_fingerprint
from retrieval.towers.efficientnet import EfficientNetLiteImageTower
from retrieval.train import train
from retrieval.train.adaptation import ADAPT_DIR, RECORD_FILE
from retrieval.train.optim import build_optimizer, set_lr
from retrieval.train.prefix import (
    PrefixImageFeatures,
    encode_prefix_rows,
    features_through_prefix,
    recompute_batchnorm,
    tower_split,
)

from support.tiny import LITE


@pytest.fixture(scope="module")
def lite_model():
    torch.manual_seed(0)
    return build_model(LITE, ["a red circle", "a blue square"], device="cpu")


@pytest.fixture
def run_config(dataset, tmp_path) -> TrainConfig:
    return TrainConfig(
        train_data=str(dataset["train"]),
        val_data=str(dataset["val"]),
        out_dir=str(tmp_path / "run"),
        model=LITE,
        batch_size=8,
        epochs=2,
        adapt_image_layers=2,
        adapt_epochs=2,
        warmup_steps=2,
        hard_negatives=False,
        checkpoint_every=0,
        progress=False,
        runtime="torch",
        feature_cache=False,
    )


# ------------------------------------------------------------------------------ the split itself
@pytest.mark.parametrize(("variant", "colour"), [("lite0", 0), ("lite2", 0), ("lite0", 3)])
def test_every_split_gives_the_towers_own_features(variant, colour):
    torch.manual_seed(1)
    tower = EfficientNetLiteImageTower(variant, 64, colour_levels=colour).eval()
    with torch.no_grad():  # random BatchNorm statistics, so every stage matters
        for module in tower.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = tower(pixels)  # [3, F]
        for split in range(len(tower.blocks())):
            rows = tower.encode_prefix(pixels, split)  # [3, P]
            assert rows.dim() == 2 and rows.shape[0] == 3
            torch.testing.assert_close(tower.forward_suffix(rows, split), whole, rtol=0, atol=1e-5)


def test_split_point_follows_what_trains():
    tower = EfficientNetLiteImageTower("lite0", 32)
    for p in tower.parameters():
        p.requires_grad_(False)
    assert tower.split_point() is None  # nothing trains
    for p in tower.head_conv.parameters():
        p.requires_grad_(True)
    assert tower.split_point() == 7
    for p in tower.stages[5].parameters():
        p.requires_grad_(True)
    assert tower.split_point() == 5
    for p in tower.stem.parameters():
        p.requires_grad_(True)
    assert tower.split_point() is None  # the stem trains: nothing is left to cache


def test_bad_prefix_rows_and_splits_are_named():
    tower = EfficientNetLiteImageTower("lite0", 32).eval()
    with pytest.raises(ValueError, match="stage index between 0 and 7"):
        tower.encode_prefix(torch.zeros(1, 3, 32, 32), 9)
    rows = tower.encode_prefix(torch.zeros(1, 3, 32, 32), 6)
    with pytest.raises(ValueError, match="another split, input size"):
        tower.forward_suffix(rows, 5)
    coloured = EfficientNetLiteImageTower("lite0", 32, colour_levels=2).eval()
    with pytest.raises(ValueError, match="colour histogram"):
        coloured.forward_suffix(rows, 6)  # rows of the tower without the histogram


def test_unfreezing_counts_the_head_conv_then_stages(lite_model):
    model = TwinEncoder(LITE.replace(unfreeze_image_layers=1), lite_model.image_tower, lite_model.text_tower)
    assert tower_split(model) == 7
    trained = {n for n, p in model.image_tower.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("head_conv.") for n in trained)
    model.set_training(unfreeze_image_layers=3)
    assert tower_split(model) == 5
    model.set_training(unfreeze_image_layers=0)
    assert tower_split(model) is None


# ----------------------------------------------------------------------------- the cached prefix
def test_prefix_rows_are_cached_by_the_prefix_alone(lite_model, dataset, tmp_path):
    from retrieval.data import read_pairs

    images = read_pairs(str(dataset["val"])).images()
    cache = FeatureCache(tmp_path / "features")
    model = lite_model
    rows, kept, broken = encode_prefix_rows(model, images, 6, torch.device("cpu"), 5, feature_cache=cache)
    assert kept == list(range(len(images))) and not broken
    assert cache.misses == len(images) and cache.hits == 0
    again, _, _ = encode_prefix_rows(model, images, 6, torch.device("cpu"), 5, feature_cache=cache)
    assert cache.hits == len(images)
    torch.testing.assert_close(again, rows)
    fingerprint = prefix_fingerprint(model.image_tower, 6)
    with torch.no_grad():  # what the suffix learns does not change the prefix's key
        model.image_tower.head_conv[0].weight.add_(0.5)
    assert prefix_fingerprint(model.image_tower, 6) == fingerprint
    with torch.no_grad():
        model.image_tower.stages[2][0].project[0].weight.add_(0.5)
        model.image_tower.head_conv[0].weight.sub_(0.5)
    assert prefix_fingerprint(model.image_tower, 6) != fingerprint
    with torch.no_grad():
        model.image_tower.stages[2][0].project[0].weight.sub_(0.5)


def test_cached_prefix_gives_the_models_own_vectors(lite_model, dataset):
    from retrieval.data import read_pairs

    model = lite_model.eval()
    images = read_pairs(str(dataset["val"])).images()
    cache = PrefixImageFeatures(model, images, 7, torch.device("cpu"), 4)
    with torch.no_grad():
        got = cache(model, images)  # [N, D]
    want = model.encode_images(images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_features_through_the_prefix_are_the_towers_and_fill_both_caches(lite_model, dataset, tmp_path):
    from retrieval import encoding
    from retrieval.data import read_pairs

    model = lite_model.eval()
    images = read_pairs(str(dataset["train"])).images()
    unique = sorted(set(images))
    cache = FeatureCache(tmp_path / "features")
    features, kept, broken = features_through_prefix(
        model, unique, 7, torch.device("cpu"), 5, feature_cache=cache
    )
    assert kept == list(range(len(unique))) and not broken
    want = encoding.encode_image_features(model, unique, batch_size=5, runtime="torch").vectors
    torch.testing.assert_close(features, want, rtol=1e-4, atol=1e-5)
    # embed / eval of the same images read the whole tower's features from the cache
    again = FeatureCache(tmp_path / "features")
    read = encoding.encode_image_features(model, unique, batch_size=5, runtime="torch", feature_cache=again)
    assert again.hits == len(unique) and again.misses == 0
    torch.testing.assert_close(read.vectors, features)
    # and the adaptation phase reads the prefix rows
    rows, _, _ = encode_prefix_rows(model, unique, 7, torch.device("cpu"), 5, feature_cache=again)
    assert again.misses == 0 and rows.shape[0] == len(unique)


def test_the_heads_go_through_the_prefix_only_when_adaptation_will_read_it(lite_model, monkeypatch):
    from retrieval.train.prefix import planned_split

    config = TrainConfig(train_data="unused", feature_cache=True, adapt_image_layers=1)
    assert not any(p.requires_grad for p in lite_model.image_tower.parameters())
    assert planned_split(config, lite_model, 100) == 7  # the head conv: the last of 8 units
    assert planned_split(config.replace(adapt_image_layers=2), lite_model, 100) == 6
    assert planned_split(config.replace(adapt_image_layers=0), lite_model, 100) is None
    assert planned_split(config.replace(feature_cache=False), lite_model, 100) is None  # nowhere to keep rows
    monkeypatch.setenv("RETRIEVAL_FEATURE_CACHE_MB", "1")
    assert planned_split(config, lite_model, 100) == 7  # 100 rows of ~2.5 KB fit in half a megabyte
    assert planned_split(config, lite_model, 10_000) is None  # 10,000 would evict each other
    assert lite_model.image_tower.training == lite_model.training  # the probe left its mode alone


def test_a_run_that_adapts_runs_the_locked_tower_once_per_image(run_config, monkeypatch, tmp_path):
    """The heads' features come from the prefix the adaptation phase needs: every training and
    validation image goes through the tower's locked part once in the whole run."""
    from retrieval.data import read_pairs

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    prefix_rows, whole = [0], [0]
    encode_prefix, forward = EfficientNetLiteImageTower.encode_prefix, EfficientNetLiteImageTower.forward

    def counting_prefix(self, pixel_values, split):
        if pixel_values.abs().sum() > 0:  # not the all-zero probe of the prefix's width
            prefix_rows[0] += pixel_values.shape[0]
        return encode_prefix(self, pixel_values, split)

    def counting_forward(self, pixel_values):
        whole[0] += pixel_values.shape[0]
        return forward(self, pixel_values)

    monkeypatch.setattr(EfficientNetLiteImageTower, "encode_prefix", counting_prefix)
    monkeypatch.setattr(EfficientNetLiteImageTower, "forward", counting_forward)
    config = run_config.replace(feature_cache=True, adapt_image_layers=1, adapt_epochs=1, epochs=1)
    result = train(config)
    assert [p["phase"] for p in result.phases] == ["heads", "adapt"]
    images = {*read_pairs(config.train_data).images(), *read_pairs(config.val_data).images()}
    contents = {Path(image).read_bytes() for image in images}  # the cache knows an image by its bytes
    assert prefix_rows[0] == len(contents) and whole[0] == 0


def test_a_run_that_adapts_runs_the_locked_text_tower_once_per_caption(run_config, monkeypatch, tmp_path):
    """With the text tower locked too, its features go to the feature cache in the heads phase and
    the adaptation phase reads them: each distinct caption runs the tower once in the whole run."""
    from retrieval.data import read_pairs
    from retrieval.towers.scratch import GRUTextTower

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    texts = [0]
    forward = GRUTextTower.forward

    def counting(self, input_ids, attention_mask=None):
        texts[0] += input_ids.shape[0]
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(GRUTextTower, "forward", counting)
    config = run_config.replace(
        feature_cache=True, adapt_image_layers=1, adapt_epochs=1, epochs=1, model=LITE.replace(lock_text=True)
    )
    result = train(config)
    assert [p["phase"] for p in result.phases] == ["heads", "adapt"]
    captions = {*read_pairs(config.train_data).captions(), *read_pairs(config.val_data).captions()}
    assert texts[0] == len(captions)


def test_an_adapted_model_encodes_training_images_from_their_cached_prefix(run_config, monkeypatch, tmp_path):
    """embed / eval of the adapted model run only its trained suffix on images training saw: their
    locked prefix's rows are in the feature cache; other images run the whole tower."""
    from retrieval import encoding
    from retrieval.data import read_pairs

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    _fake_validation(monkeypatch, [0.2, 0.3])  # the adapted model is kept
    config = run_config.replace(feature_cache=True, adapt_image_layers=1, adapt_epochs=1, epochs=1)
    result = train(config)
    assert result.phases[-1]["kept"]
    model = TwinEncoder.load(result.model_dir, device="cpu")
    assert tower_split(model) == 7
    seen = sorted(set(read_pairs(config.train_data).images()))
    unseen = sorted(set(read_pairs(config.val_data).images()))  # the fake validation never encoded them
    want = encoding.encode_images(model, seen + unseen, runtime="torch").vectors  # no cache: the whole tower
    whole = [0]
    forward = EfficientNetLiteImageTower.forward

    def counting_forward(self, pixel_values):
        whole[0] += pixel_values.shape[0]
        return forward(self, pixel_values)

    monkeypatch.setattr(EfficientNetLiteImageTower, "forward", counting_forward)
    cache = FeatureCache()
    got = encoding.encode_images(model, seen + unseen, batch_size=7, runtime="torch", feature_cache=cache)
    torch.testing.assert_close(got.vectors, want, rtol=1e-4, atol=1e-5)
    contents = {Path(image).read_bytes() for image in unseen} - {Path(image).read_bytes() for image in seen}
    assert whole[0] == len(contents)  # only images training never saw ran the whole tower


def test_recomputed_batchnorm_holds_the_training_images_statistics(dataset):
    from retrieval.data import read_pairs

    torch.manual_seed(0)
    model = build_model(LITE.replace(unfreeze_image_layers=1), ["a"], device="cpu")
    images = read_pairs(str(dataset["train"])).images()
    cache = PrefixImageFeatures(model, images, 7, torch.device("cpu"), 64)
    norm = model.image_tower.head_conv[1]
    seen = []
    hook = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    with torch.no_grad():
        cache.tower_features(model, sorted(cache.index, key=cache.index.__getitem__))
    hook.remove()
    inputs = torch.cat(seen)  # [N, C, h, w] what the head's BatchNorm sees
    assert recompute_batchnorm(model, cache, batch_size=len(images)) == 1
    torch.testing.assert_close(norm.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, inputs.var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert not norm.training and norm.momentum == 0.01  # frozen again, as it was


def test_tower_layers_learn_at_their_share_of_the_rate(lite_model):
    model = TwinEncoder(LITE.replace(unfreeze_image_layers=2), lite_model.image_tower, lite_model.text_tower)
    config = TrainConfig(lr=1e-3, tower_lr_scale=0.1)
    optimizer = build_optimizer(config, model)
    set_lr(optimizer, 2e-3)
    towers = [*model.image_tower.parameters(), *model.text_tower.parameters()]
    tower = {id(p) for p in towers if p.requires_grad}
    assert {id(p) for p in model.image_tower.parameters() if p.requires_grad} <= tower
    for group in optimizer.param_groups:
        inside = {id(p) in tower for p in group["params"]}
        assert len(inside) == 1  # a group is either tower layers or heads
        assert group["lr"] == pytest.approx(2e-4 if inside == {True} else 2e-3)
    model.set_training(unfreeze_image_layers=0)


# ------------------------------------------------------------------------- heads, then adaptation
def _fake_validation(monkeypatch, values):
    import retrieval.train.loop as loop

    calls = iter(values)

    def fake(model, pairs, config, device, caches=None):
        value = next(calls)
        return {"mean_recall": value, "t2i/R@10": value}

    monkeypatch.setattr(loop, "validate", fake)


def test_adaptation_is_kept_when_validation_improves(run_config, monkeypatch):
    _fake_validation(monkeypatch, [0.2, 0.3, 0.25, 0.4])
    result = train(run_config)
    run = result.run_dir
    assert [p["phase"] for p in result.phases] == ["heads", "adapt"]
    heads, adapt = result.phases
    assert heads["best_metric"] == 0.3 and not heads["kept"]
    assert adapt["best_metric"] == 0.4 and adapt["kept"]
    assert "adaptation kept" in result.adaptation and "0.3000 -> 0.4000" in result.adaptation
    assert result.model_dir == run / "best" and result.best_metric == 0.4
    assert result.steps == heads["steps"] + adapt["steps"]
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["decision"] == result.adaptation and len(record["phases"]) == 2
    chosen = TwinEncoder.load(run / "best", device="cpu")
    adapted = TwinEncoder.load(run / ADAPT_DIR / "best", device="cpu")
    assert chosen.fingerprint() == adapted.fingerprint()
    heads_model = TwinEncoder.load(run / "heads-best", device="cpu")
    assert heads_model.fingerprint() != chosen.fingerprint()
    assert (
        chosen.image_tower.stages[6][0]
        .project[0]
        .weight.ne(heads_model.image_tower.stages[6][0].project[0].weight)
        .any()
    )  # the last stage was trained
    torch.testing.assert_close(  # the locked prefix was not
        chosen.image_tower.stages[5][0].project[0].weight,
        heads_model.image_tower.stages[5][0].project[0].weight,
    )
    config = json.loads((run / ADAPT_DIR / "config.json").read_text())
    assert (
        config["tower_lr_scale"] == run_config.adapt_lr_scale
        and config["model"]["unfreeze_image_layers"] == 2
    )


def test_adaptation_is_dropped_when_validation_does_not_improve(run_config, monkeypatch):
    _fake_validation(monkeypatch, [0.2, 0.3, 0.3, 0.25])
    result = train(run_config)
    heads, adapt = result.phases
    assert heads["kept"] and not adapt["kept"]
    assert "not kept" in result.adaptation and result.best_metric == 0.3
    assert result.model_dir == result.run_dir / "best"
    chosen = TwinEncoder.load(result.model_dir, device="cpu")
    assert (
        chosen.fingerprint()
        != TwinEncoder.load(result.run_dir / ADAPT_DIR / "best", device="cpu").fingerprint()
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"adapt_image_layers": 0}, "adapt_image_layers=0"),
        ({"val_data": None, "val_fraction": 0.0}, "no validation"),
        ({"model": LITE.replace(lock_image=False, image_tower="cnn", image_size=16)}, "not locked"),
        ({"adapt_image_layers": 9}, "has 8 units"),
        ({"time_budget": 1e-6}, "time budget"),
    ],
    ids=["off", "no-validation", "tower-trained", "too-many-units", "no-time"],
)
def test_why_adaptation_did_not_run_is_said(run_config, changes, reason):
    result = train(run_config.replace(**changes, epochs=1))
    assert [p["phase"] for p in result.phases] == ["heads"]
    assert result.phases[0]["kept"]
    assert result.adaptation.startswith("no adaptation") and reason in result.adaptation
    assert not (result.run_dir / ADAPT_DIR / "best").exists()


def test_an_adaptation_phase_resumes_where_it_stopped(run_config, monkeypatch):
    stops = {"n": 0}

    def stop_in_adaptation(record):
        if record["phase"] == "adapt":
            stops["n"] += 1
            return stops["n"] == 2  # the second step of the adaptation phase
        return False

    first = train(run_config.replace(checkpoint_every=1), callback=stop_in_adaptation)
    assert first.status == "interrupted" and first.phases[-1]["phase"] == "adapt"
    assert not first.phases[-1]["kept"]
    heads_steps = first.phases[0]["steps"]
    resumed = train(run_config.replace(checkpoint_every=1), resume=True)
    assert resumed.status != "interrupted"
    assert resumed.phases[0]["steps"] == heads_steps  # the heads were not trained again
    assert resumed.phases[-1]["phase"] == "adapt" and resumed.phases[-1]["steps"] > 2
    again = train(run_config.replace(checkpoint_every=1), resume=True)  # finished: nothing more
    assert again.adaptation == resumed.adaptation and again.steps == resumed.steps


def test_finished_heads_take_another_adaptation_on_resume(run_config, monkeypatch):
    _fake_validation(monkeypatch, [0.2, 0.3, 0.35, 0.4, 0.31, 0.32])
    first = train(run_config)
    assert first.phases[-1]["kept"]  # best/ holds the adapted model, heads-best/ the heads'
    heads_fp = TwinEncoder.load(first.run_dir / "heads-best", device="cpu").fingerprint()
    second = train(run_config.replace(adapt_image_layers=1), resume=True)
    assert second.phases[0]["steps"] == first.phases[0]["steps"]  # the heads were not trained again
    assert second.phases[-1]["trained"].startswith("the image tower's last 1 unit")
    assert second.phases[-1]["kept"] and "0.3000 -> 0.3200" in second.adaptation
    adapted = TwinEncoder.load(second.model_dir, device="cpu")
    trained = adapted.image_tower.stages[6][0].project[0].weight
    heads = TwinEncoder.load(first.run_dir / "heads-best", device="cpu")
    assert heads.fingerprint() == heads_fp
    torch.testing.assert_close(
        trained, heads.image_tower.stages[6][0].project[0].weight
    )  # only the head conv


def test_a_changed_adaptation_cannot_resume_mid_phase(run_config):
    stop = {"n": 0}

    def stop_early(record):
        stop["n"] += record["phase"] == "adapt"
        return stop["n"] == 1

    config = run_config.replace(checkpoint_every=1)
    assert train(config, callback=stop_early).status == "interrupted"
    with pytest.raises(ValueError, match=r"cannot resume: the adaptation phase.*adapt_lr_scale"):
        train(config.replace(adapt_lr_scale=0.5), resume=True)
