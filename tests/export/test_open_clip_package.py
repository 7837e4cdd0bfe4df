"""Round trips against the real open_clip package (``make test-open-clip``: a venv of its own, since
open_clip imports torchvision, which must match torch exactly). Skipped where open_clip cannot be imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from retrieval.export import export_model
from retrieval.export.check import sample_images
from retrieval.model import load_model

from support.hf import save_in_hub_cache
from support.open_clip_ref import eos_last_tokenizer, tiny_model_cfg

pytestmark = pytest.mark.open_clip

TEXTS = ["a red circle", "a blue square", "green"]
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def open_clip():
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision failing against this torch
        pytest.skip(f"open_clip cannot be imported here ({exc}): run `make test-open-clip`")
    return open_clip


def _pixels(preprocess) -> torch.Tensor:
    return torch.stack([preprocess(image) for image in sample_images()])  # [B, 3, H, W]


def test_a_toolkit_export_loads_in_open_clip_with_equal_embeddings(
    open_clip, tuned_clip: Path, tmp_path: Path
) -> None:
    model = load_model(tuned_clip, device="cpu")
    result = export_model(model, "open_clip", tmp_path / "oc")  # checked by open_clip itself as well
    assert max(result.max_difference.values()) <= 1e-4
    oc_model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    oc_model.eval()
    with torch.no_grad():
        pixels = model.image_transform(False)
        same_pixels = torch.stack([pixels(image) for image in sample_images()])
        image = oc_model.encode_image(same_pixels, normalize=True)
        text = oc_model.encode_text(tokenizer(TEXTS), normalize=True)
        assert torch.allclose(image, model.image_features(same_pixels), atol=1e-4)
        assert torch.allclose(text, model.encode_texts(TEXTS), atol=1e-4)
        # open_clip's own preprocessing (torchvision resampling) lands close to the toolkit's (PIL)
        theirs = oc_model.encode_image(_pixels(preprocess), normalize=True)
        assert (theirs * model.encode_images(sample_images())).sum(-1).min() > 0.98

    # the folder is what a hub repo holds: open_clip and the toolkit load it as hf-hub:ORG/NAME, offline,
    # from the test session's Hugging Face cache (huggingface_hub reads its location once, at import)
    home = Path(os.environ["HF_HOME"])
    export_model(model, "open_clip", tmp_path / "repo", options=_repo("tiny-org/tuned"))
    save_in_hub_cache(tmp_path / "repo", home, "tiny-org/tuned", REVISION)
    # what the hub cache records after transformers looked for a config.json the repo does not have
    missing = home / "hub" / "models--tiny-org--tuned" / ".no_exist" / REVISION
    missing.mkdir(parents=True)
    (missing / "config.json").touch()
    hub_model, _, _ = open_clip.create_model_and_transforms(
        "hf-hub:tiny-org/tuned", cache_dir=str(home / "hub")
    )
    hub_tokens = open_clip.get_tokenizer("hf-hub:tiny-org/tuned", cache_dir=str(home / "hub"))(TEXTS)
    with torch.no_grad():
        assert torch.allclose(hub_model.eval().encode_text(hub_tokens, normalize=True), text, atol=1e-5)
    assert (
        load_model("hf-hub:tiny-org/tuned", device="cpu").fingerprint()
        == load_model(tmp_path / "repo", device="cpu").fingerprint()
    )


def _repo(repo_id: str):
    from retrieval.export import ExportOptions

    return ExportOptions(repo_id=repo_id)


@pytest.mark.parametrize("custom_text", [False, True])
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_an_open_clip_model_loads_in_the_toolkit_with_equal_embeddings(
    open_clip, tmp_path: Path, custom_text: bool, quick_gelu: bool
) -> None:
    from safetensors.torch import save_file

    cfg = tiny_model_cfg(quick_gelu)
    cfg["text_cfg"]["hf_tokenizer_name"] = "local"
    if custom_text:
        cfg["custom_text"] = True
    torch.manual_seed(7)
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    oc_model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**kwargs).eval()
    with torch.no_grad():  # open_clip initialises some weights to zero: make every one count
        for param in oc_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    folder = tmp_path / "oc"
    folder.mkdir()
    preprocess = {
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
    )
    save_file(
        {k: v.contiguous() for k, v in oc_model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    eos_last_tokenizer().save_pretrained(folder)

    model = load_model(folder, device="cpu")
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(
            model.image_features(pixels), oc_model.encode_image(pixels, normalize=True), atol=1e-4
        )
        assert torch.allclose(
            model.encode_texts(TEXTS), oc_model.encode_text(tokens, normalize=True), atol=1e-4
        )
    # and open_clip loads the toolkit's model back
    export_model(model, "open_clip", tmp_path / "back")
    back, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'back'}")
    with torch.no_grad():
        assert torch.allclose(back.eval().encode_image(pixels), oc_model.encode_image(pixels), atol=1e-4)


def _save_package_model(open_clip, folder: Path, cfg: dict, seed: int = 0):
    """A random open_clip model of ``cfg`` written as open_clip writes one (config, safetensors, tokenizer)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    oc_model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        for param in oc_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    folder.mkdir(parents=True)
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
    )
    save_file(
        {k: v.contiguous() for k, v in oc_model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    eos_last_tokenizer().save_pretrained(folder)
    return oc_model


def test_an_architecture_that_does_not_convert_runs_on_open_clip(
    open_clip, tmp_path: Path, pairs: Path
) -> None:
    from support.finetune import fine_tune

    cfg = tiny_model_cfg()
    cfg["text_cfg"]["hf_tokenizer_name"] = "local"
    cfg["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}  # a ResNet
    oc_model = _save_package_model(open_clip, tmp_path / "rn", cfg)
    model = load_model(tmp_path / "rn", device="cpu")
    assert model.config.image_tower.startswith("open_clip:")
    tokens = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'rn'}")(TEXTS)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(
            model.image_features(pixels), oc_model.encode_image(pixels, normalize=True), atol=1e-5
        )
        assert torch.allclose(
            model.encode_texts(TEXTS), oc_model.encode_text(tokens, normalize=True), atol=1e-5
        )
    model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved", device="cpu")
    assert again.fingerprint() == model.fingerprint()
    assert torch.equal(again.encode_texts(TEXTS), model.encode_texts(TEXTS))
    run = fine_tune(tmp_path / "rn", pairs, tmp_path / "run", "clip")
    tuned = load_model(run / "final", device="cpu")
    assert tuned.base_model["format"] == "open_clip"
    assert (tuned.encode_images(sample_images()) - model.encode_images(sample_images())).abs().max() > 1e-5
    with pytest.raises(ValueError, match="toolkit architecture that transformers"):
        export_model(tuned, "transformers", tmp_path / "x")
    result = export_model(
        tuned, "open_clip", tmp_path / "back"
    )  # it is an open_clip model: written back as one
    assert max(result.max_difference.values()) <= 1e-4
    back, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'back'}")
    with torch.no_grad():
        assert torch.allclose(
            back.eval().encode_image(pixels, normalize=True), tuned.image_features(pixels), atol=1e-5
        )


@pytest.mark.parametrize("timm_name", ["vit_base_patch16_siglip_224", "vit_base_patch32_siglip_256"])
def test_an_open_clip_siglip_with_timms_tower_converts_with_equal_embeddings(
    open_clip, tmp_path: Path, timm_name: str
) -> None:
    """open_clip's SigLIP layout (timm's SigLIP ViT by name, random weights) becomes a
    transformers SiglipModel without open_clip, embedding as open_clip does."""
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 768,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 64,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
        },
        "text_cfg": {
            "context_length": 12,
            "vocab_size": 17,
            "hf_tokenizer_name": "local",
            "width": 32,
            "heads": 4,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
            "act_kwargs": {"approximate": "tanh"},
        },
    }
    folder = tmp_path / "siglip"
    folder.mkdir()
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
    )
    torch.manual_seed(0)
    oc_model = open_clip.create_model(f"local-dir:{folder}", pretrained=None).eval()
    with torch.no_grad():
        for param in oc_model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    save_file(
        {k: v.contiguous() for k, v in oc_model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    eos_last_tokenizer(12).save_pretrained(folder)

    model = load_model(folder, device="cpu")
    assert model.image_tower.backbone.config.model_type == "siglip_vision_model"  # converted, not wrapped
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)
    side = int(timm_name[-3:])
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(
            model.image_features(pixels), oc_model.encode_image(pixels, normalize=True), atol=1e-4
        )
        assert torch.allclose(
            model.encode_texts(TEXTS), oc_model.encode_text(tokens, normalize=True), atol=1e-4
        )
    assert float(model.logit_bias.detach()) == pytest.approx(float(oc_model.logit_bias.detach()))
