"""Settings of tiny real models (random weights: they build and run in milliseconds)."""

from __future__ import annotations

from retrieval.config import ModelConfig

CAPTIONS = [
    "a red car",
    "a blue dog running",
    "two green cats",
    "a small red boat on the water",
    "the big dog",
]
TINY = {
    "embed_dim": 32,
    "image_size": 32,
    "image_width": 16,
    "image_layers": 2,
    "image_heads": 2,
    "patch_size": 8,
    "text_width": 16,
    "text_layers": 2,
    "text_heads": 2,
    "vocab_size": 300,
    "context_length": 16,
    "lock_text": False,  # the library default locks the (pretrained) text tower
}


def tiny_config(image_tower: str = "cnn", text_tower: str = "gru", **changes: object) -> ModelConfig:
    """The model tests' tiny towers (every tower trains), with ``changes``."""
    return ModelConfig(image_tower=image_tower, text_tower=text_tower, **{**TINY, **changes})


# A small CNN + GRU model for the search, embed (Ray) and evaluate tests: 32-dim vectors, 32 px images.
CNN_GRU = ModelConfig(
    image_tower="cnn",
    text_tower="gru",
    embed_dim=32,
    image_size=32,
    image_width=8,
    image_layers=2,
    text_width=16,
    text_layers=1,
    vocab_size=300,
    context_length=16,
)


# EfficientNet-Lite0 (its ImageNet weights) at 32 px with a tiny GRU text tower and an MLP head: the
# smallest model with a pretrained tower that splits, for the adaptation and colour-histogram tests.
LITE = ModelConfig(
    image_tower="efficientnet-lite0:32",
    text_tower="gru",
    embed_dim=16,
    text_width=8,
    text_layers=1,
    vocab_size=120,
    context_length=8,
    lock_text=False,
    projection="mlp",
    projection_hidden=32,
)
