"""A caption tokenizer trained on the training captions with the ``tokenizers`` library.

Byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet, so no caption is ever out of
vocabulary) or WordPiece (Schuster & Nakajima 2012, as in BERT). Every sequence is
``[CLS] tokens [EOS]``; ``[PAD]`` has id 0. Saved as a single ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[EOS]"]
PAD_ID = 0
KINDS = ("bpe", "wordpiece")


class CaptionTokenizer:
    """Tokenizes captions into ``{"input_ids": [B, L], "attention_mask": [B, L]}`` (int64, padded to
    the longest caption of the batch, truncated to ``context_length``)."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        if context_length < 3:
            raise ValueError(
                f"context_length must be at least 3 ([CLS] token [EOS]), received {context_length}"
            )
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.tokenizer.enable_truncation(max_length=self.context_length)
        self.tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        *,
        vocab_size: int,
        context_length: int,
        kind: str = "bpe",
        lowercase: bool = True,
    ) -> CaptionTokenizer:
        """Learn a vocabulary of at most ``vocab_size`` tokens from ``captions`` (may be empty: BPE then
        keeps the 256-byte alphabet)."""
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer {kind!r}; expected one of {list(KINDS)}")
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        if kind == "bpe":
            tokenizer = Tokenizer(models.BPE())
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tokenizer.decoder = decoders.ByteLevel()
            trainer: Any = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=SPECIAL_TOKENS,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        else:
            tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
            tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tokenizer.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
            )
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.train_from_iterator((c for c in captions if isinstance(c, str)), trainer=trainer)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [EOS]",
            special_tokens=[
                ("[CLS]", tokenizer.token_to_id("[CLS]")),
                ("[EOS]", tokenizer.token_to_id("[EOS]")),
            ],
        )
        return cls(tokenizer, context_length)

    @classmethod
    def load(cls, path: str | Path, context_length: int) -> CaptionTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} is missing: the model folder is incomplete")
        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        from retrieval.config import atomic_write_text

        atomic_write_text(Path(path), self.tokenizer.to_str())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def digest(self) -> str:
        """sha256 of the vocabulary and settings (stable across save/load)."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        payload = json.dumps(
            {
                "vocab": vocab,
                "context_length": self.context_length,
                "normalizer": repr(self.tokenizer.normalizer),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("tokenize expects a list of strings, e.g. ['a red car']")
        if not texts:
            empty = torch.zeros((0, 1), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encodings = self.tokenizer.encode_batch(list(texts))
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # [B, L]
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # [B, L]
        return {"input_ids": input_ids, "attention_mask": attention_mask}
