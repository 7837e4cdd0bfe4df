from __future__ import annotations

import pytest
import torch

from retrieval.model import build_model
from retrieval.towers import IMAGE_TOWERS, TEXT_TOWERS, CaptionTokenizer, build_image_tower, build_text_tower

from support.tiny import CAPTIONS, tiny_config

COMBOS = [("cnn", "gru"), ("cnn", "transformer"), ("vit", "gru"), ("vit", "transformer")]


def test_registries_are_tables() -> None:
    assert {"cnn", "vit", "hf"} <= set(IMAGE_TOWERS)
    assert {"gru", "transformer", "hf"} <= set(TEXT_TOWERS)


def test_unknown_tower_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown image tower 'resnet'.*'cnn', 'vit', 'hf:<id-or-path>'"):
        build_image_tower(tiny_config("resnet"))
    with pytest.raises(ValueError, match=r"unknown text tower 'lstm'.*'gru', 'transformer'"):
        build_text_tower(tiny_config(text_tower="lstm"))
    with pytest.raises(ValueError, match="takes no"):
        build_image_tower(tiny_config("cnn:big"))
    with pytest.raises(ValueError, match="needs a model"):
        build_image_tower(tiny_config("hf:"))


@pytest.mark.parametrize("image_tower,text_tower", COMBOS)
def test_forward_shapes_unit_norm_float32(image_tower: str, text_tower: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(image_tower, text_tower), CAPTIONS, device="cpu")
    images = model.image_features(torch.randn(3, 3, 32, 32))
    texts = model.text_features(model.tokenize(CAPTIONS[:3]))
    for out in (images, texts):
        assert out.shape == (3, 32) and out.dtype == torch.float32
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    (images * texts).sum().backward()
    assert all(
        p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.logit_scale
    )


@pytest.mark.parametrize("text_tower", ["gru", "transformer"])
def test_text_features_ignore_padding(text_tower: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(text_tower=text_tower), CAPTIONS, device="cpu").eval()
    with torch.no_grad():
        alone = model.text_features(model.tokenize(["a red car"]))
        padded = model.text_features(model.tokenize(["a red car", "a small red boat on the water again"]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_projection_kinds() -> None:
    assert build_model(tiny_config(projection="mlp"), device="cpu").image_features(
        torch.randn(1, 3, 32, 32)
    ).shape == (
        1,
        32,
    )
    model = build_model(
        tiny_config("vit", "transformer", projection="none", image_width=32, text_width=32), device="cpu"
    )
    assert model.text_features(model.tokenize(["x"])).shape == (1, 32)
    with pytest.raises(ValueError, match="projection='none' needs the image tower output"):
        build_model(tiny_config(projection="none", embed_dim=24), device="cpu")


def test_vit_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        build_model(tiny_config("vit", patch_size=5), device="cpu")
    model = build_model(tiny_config("vit"), device="cpu")
    with pytest.raises(ValueError, match="expects 32x32"):
        model.image_features(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_tokenizer_training_truncation_and_special_tokens(kind: str) -> None:
    tokenizer = CaptionTokenizer.train(CAPTIONS * 3, vocab_size=400, context_length=6, kind=kind)
    tokens = tokenizer(["a red car", "a small red boat on the water with many more words"])
    assert tokens["input_ids"].dtype == torch.long and tokens["input_ids"].shape[1] == 6
    assert tokens["input_ids"][0, 0].item() == tokenizer.tokenizer.token_to_id("[CLS]")
    assert tokens["attention_mask"][1].tolist() == [1] * 6
    assert tokens["attention_mask"][0].sum() < 6
    assert tokenizer(["A RED CAR"])["input_ids"].tolist() == tokenizer(["a red car"])["input_ids"].tolist()
    assert tokenizer([])["input_ids"].shape == (0, 1)
    with pytest.raises(ValueError, match="list of strings"):
        tokenizer("a red car")  # type: ignore[arg-type]


def test_byte_level_tokenizer_without_captions_handles_any_text() -> None:
    tokenizer = CaptionTokenizer.train([], vocab_size=300, context_length=32)
    ids = tokenizer(["ünïcödé 🚗 text"])["input_ids"]
    assert tokenizer.tokenizer.token_to_id("[UNK]") not in ids[0].tolist()
    with pytest.raises(ValueError, match="unknown tokenizer"):
        CaptionTokenizer.train([], vocab_size=300, context_length=8, kind="sentencepiece")


def test_lock_freezes_a_tower() -> None:
    model = build_model(tiny_config(lock_image=True), CAPTIONS, device="cpu")
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    assert all(p.requires_grad for p in model.text_tower.parameters())
    loss = (
        model.image_features(torch.randn(2, 3, 32, 32)) * model.text_features(model.tokenize(["a", "b"]))
    ).sum()
    loss.backward()
    assert all(p.grad is None for p in model.image_tower.parameters())
    assert model.image_projection.weight.grad is not None  # the head still learns (LiT)
    model.train()
    assert model.training and not model.image_tower.training and model.text_tower.training


@pytest.mark.parametrize("image_tower,text_tower", COMBOS)
def test_partial_unfreezing_trains_the_last_blocks(image_tower: str, text_tower: str) -> None:
    model = build_model(
        tiny_config(image_tower, text_tower, unfreeze_image_layers=1, unfreeze_text_layers=1),
        CAPTIONS,
        device="cpu",
    )
    for tower in (model.image_tower, model.text_tower):
        blocks = tower.blocks()
        assert len(blocks) == 2
        assert not any(p.requires_grad for p in blocks[0].parameters())
        assert all(p.requires_grad for p in blocks[1].parameters())
        assert all(p.requires_grad for m in tower.head() for p in m.parameters())
    model.train()
    assert model.image_tower.training  # partly trainable towers follow train()
    with pytest.raises(ValueError, match="has 2 blocks"):
        build_model(tiny_config(unfreeze_image_layers=3), device="cpu")


def test_shared_mode_runs_one_trunk() -> None:
    config = tiny_config("vit", "transformer", shared=True, image_width=32, image_layers=2)
    model = build_model(config, CAPTIONS, device="cpu")
    assert model.text_tower.layers is model.image_tower.layers
    assert model.text_tower.norm is model.image_tower.norm
    assert model.text_projection is model.image_projection
    separate = build_model(config.replace(shared=False, text_width=32, text_layers=2), CAPTIONS, device="cpu")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in separate.parameters())
    images = model.image_features(torch.randn(2, 3, 32, 32))
    texts = model.text_features(model.tokenize(["a red car", "a dog"]))
    (images * texts).sum().backward()
    assert model.image_tower.layers[0].linear1.weight.grad is not None
    with pytest.raises(ValueError, match="shared=True needs image_tower='vit' and text_tower='transformer'"):
        build_model(tiny_config(shared=True), device="cpu")


def test_tokenizer_training_is_the_same_in_every_process() -> None:
    import subprocess
    import sys

    code = (
        "from retrieval.towers.tokenizer import CaptionTokenizer as T\n"
        f"captions = {CAPTIONS!r} * 5 + ['x%dy%d' % (i, 7 * i) for i in range(200)]\n"
        "for kind in ('bpe', 'wordpiece'):\n"
        "    print(T.train(captions, vocab_size=320, context_length=16, kind=kind).digest())\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in "ab"
    ]
    assert runs[0] == runs[1] and len(runs[0].split()) == 2
    captions = CAPTIONS * 5 + [f"x{i}y{7 * i}" for i in range(200)]
    here = [
        CaptionTokenizer.train(captions, vocab_size=320, context_length=16, kind=k).digest()
        for k in ("bpe", "wordpiece")
    ]
    assert runs[0].split() == here
