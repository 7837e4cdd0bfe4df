"""Tiny random transformers checkpoints written to a temporary folder (the hub is never contacted)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "green", "car", "dog", "cat", "photo", "of", "the", "running", "small", "big"]
TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}


def word_tokenizer(max_length: int):
    """A word-level fast tokenizer over WORDS with [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )


def trained_tokenizer(texts: list[str], max_length: int):
    """A word-level fast tokenizer trained on ``texts`` (special tokens [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )


def _tokenizer(texts: list[str] | None, max_length: int):
    return word_tokenizer(max_length) if texts is None else trained_tokenizer(texts, max_length)


def save_tiny_bert(folder: Path) -> str:
    """A random 2-layer BERT text encoder with the WORDS tokenizer (all-MiniLM-L6-v2's architecture,
    tiny), saved to ``folder``; returns the folder as a string."""
    from transformers import BertConfig, BertModel

    tokenizer = word_tokenizer(24)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_clip(path: Path, texts: list[str] | None = None) -> Path:
    """A random 2-layer CLIP (``CLIPModel.save_pretrained``) with its processor and a word tokenizer
    (over WORDS, or trained on ``texts``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = _tokenizer(texts, 16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 16, "eos_token_id": 3},
        vision_config={**VISION, "image_size": 30, "patch_size": 6},
        projection_dim=24,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        path
    )
    tokenizer.save_pretrained(path)
    return path


def save_tiny_siglip(path: Path, texts: list[str] | None = None) -> Path:
    """A random 2-layer SigLIP (logit scale 2.3, bias -7) with its processor and a word tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = _tokenizer(texts, 12)
    torch.manual_seed(1)
    config = SiglipConfig(
        text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 12},
        vision_config={**VISION, "image_size": 32, "patch_size": 8},
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-7.0)
    model.save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_in_hub_cache(folder: Path, hf_home: Path, repo_id: str, revision: str) -> Path:
    """Lay ``folder`` out in a Hugging Face cache under ``hf_home`` as ``hf download`` leaves it:
    ``hub/models--org--name/{blobs/<sha256>, snapshots/<revision>/<file> -> blob, refs/main}``."""
    import hashlib
    import os

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
