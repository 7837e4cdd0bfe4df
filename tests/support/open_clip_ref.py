"""A tiny reference of open_clip's ViT CLIP, written from its published layout for tests without the
open_clip package: the same module names (so ``state_dict()`` keys are open_clip's own), the same
forward (class-token pooling after ``ln_post``, ``x @ proj``; causal text attention pooled at the
end-of-text token), and the files open_clip writes (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, ``open_clip_model.safetensors``, tokenizer files).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WORDS = ["a", "red", "blue", "green", "car", "dog", "cat", "photo", "of", "the", "running", "small", "big"]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, mlp)), ("gelu", act()), ("c_proj", nn.Linear(mlp, width))])
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, mlp, act) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self, cfg: dict[str, Any], embed_dim: int, act: type[nn.Module]) -> None:
        super().__init__()
        width, patch, size = cfg["width"], cfg["patch_size"], cfg["image_size"]
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        mlp = int(width * cfg.get("mlp_ratio", 4.0))
        self.transformer = Transformer(width, cfg["layers"], width // cfg.get("head_width", 64), mlp, act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [B, N, W]
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)  # [B, N + 1, W]
        x = self.ln_pre(x + self.positional_embedding)
        x = self.ln_post(self.transformer(x))
        return x[:, 0] @ self.proj  # [B, E]


class MiniCLIP(nn.Module):
    """open_clip's ``CLIP`` (built-in text tower) for a ``model_cfg`` of the ViT CLIP layout."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        super().__init__()
        act = QuickGELU if model_cfg.get("quick_gelu") else nn.GELU
        embed, text = model_cfg["embed_dim"], model_cfg["text_cfg"]
        self.visual = Visual(model_cfg["vision_cfg"], embed, act)
        width, length = text["width"], text["context_length"]
        self.token_embedding = nn.Embedding(text["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.randn(length, width) * 0.1)
        mlp = int(width * text.get("mlp_ratio", 4.0))
        self.transformer = Transformer(width, text["layers"], text["heads"], mlp, act)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))
        self.pool_type = text.get("pool_type", "argmax")
        self.eos_id = text.get("eos_id", 2)
        mask = torch.full((length, length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))  # [B, L, W]
        at = ids.argmax(-1) if self.pool_type == "argmax" else (ids == self.eos_id).int().argmax(-1)
        return F.normalize(x[torch.arange(x.shape[0]), at] @ self.text_projection, dim=-1)


def tiny_model_cfg(quick_gelu: bool = False, **text: Any) -> dict[str, Any]:
    return {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 30, "layers": 2, "width": 32, "head_width": 8, "patch_size": 6},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": len(WORDS) + 4,
            "width": 32,
            "heads": 4,
            "layers": 2,
            **text,
        },
    }


def eos_last_tokenizer(max_length: int = 16) -> Any:
    """A word tokenizer whose end-of-text token has the highest id, as in CLIP's vocabulary
    ([PAD]=0, [UNK]=1, [BOS]=2, words, [EOS] last), so open_clip's argmax pooling finds it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    eos = len(vocab)
    vocab["[EOS]"] = eos
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )


PREPROCESS = {
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def save_open_clip(folder: Path, seed: int = 0, quick_gelu: bool = False, tokenizer: bool = True) -> MiniCLIP:
    """A random :class:`MiniCLIP` written as open_clip writes a model for the hub (``open_clip_config.json``,
    ``open_clip_model.safetensors``, the tokenizer's files); returns the model (eval mode)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = tiny_model_cfg(quick_gelu)
    model = MiniCLIP(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": PREPROCESS}, indent=2)
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    if tokenizer:
        eos_last_tokenizer(cfg["text_cfg"]["context_length"]).save_pretrained(folder)
    return model


class TimmAttention(nn.Module):
    """timm's ViT attention: one ``qkv`` linear layer, heads split after it, then ``proj``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width, eps=1e-6), TimmAttention(width, heads)
        self.norm2, self.mlp = nn.LayerNorm(width, eps=1e-6), Mlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttnPool(nn.Module):
    """timm's AttentionPoolLatent: a learned query attends over the tokens, then a residual MLP."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.latent = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.q, self.kv, self.proj = (
            nn.Linear(width, width),
            nn.Linear(width, 2 * width),
            nn.Linear(width, width),
        )
        self.norm, self.mlp = nn.LayerNorm(width, eps=1e-6), Mlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, self.heads, w // self.heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        x = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, w))
        return (x + self.mlp(self.norm(x)))[:, 0]


class Trunk(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, patch: int, size: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2, width) * 0.1)
        self.blocks = nn.ModuleList(TimmBlock(width, heads, 4 * width) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn_pool = AttnPool(width, heads, 4 * width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, W]
        for block in self.blocks:
            x = block(x)
        return self.attn_pool(self.norm(x))  # [B, W]


class MiniSigLIP(nn.Module):
    """open_clip's ``CustomTextCLIP`` for a SigLIP config: a timm SigLIP ViT (``visual.trunk``) and a
    bidirectional text transformer pooled at the last position with a biased projection."""

    def __init__(self, width: int = 48, text_width: int = 32, context: int = 12) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = Trunk(width, 2, 12, 8, 32)  # 12 heads: timm's vit_base_*_siglip_*
        self.text = nn.Module()
        self.text.token_embedding = nn.Embedding(len(WORDS) + 4, text_width)
        self.text.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.1)
        self.text.transformer = Transformer(text_width, 2, 4, 4 * text_width, nn.GELU)
        for block in self.text.transformer.resblocks:  # open_clip's SigLIP text layer norms
            block.ln_1.eps = block.ln_2.eps = 1e-6
        self.text.ln_final = nn.LayerNorm(text_width, eps=1e-6)
        self.text.text_projection = nn.Linear(text_width, width)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-7.0))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual.trunk(pixels), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        text = self.text
        x = text.token_embedding(ids) + text.positional_embedding[: ids.shape[1]]
        x = text.ln_final(text.transformer(x))[:, -1]  # every position attends to every other; the last pools
        return F.normalize(text.text_projection(x), dim=-1)

    @staticmethod
    def config() -> dict[str, Any]:
        return {
            "embed_dim": 48,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {
                "image_size": 32,
                "timm_model_name": "vit_base_patch16_siglip_224",
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
            },
            "text_cfg": {
                "context_length": 12,
                "vocab_size": len(WORDS) + 4,
                "width": 32,
                "heads": 4,
                "layers": 2,
                "no_causal_mask": True,
                "proj_bias": True,
                "pool_type": "last",
                "norm_kwargs": {"eps": 1e-6},
            },
        }
