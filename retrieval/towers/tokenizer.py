"""A caption tokenizer trained on the training captions with the ``tokenizers`` library.

Byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet, so no caption is ever out of
vocabulary) or WordPiece (Schuster & Nakajima 2012, as in BERT: greedy longest match with "##"
continuations; its pieces are learned by BPE merges, as the tokenizers library's own trainer does).
Every sequence is ``[CLS] tokens [EOS]``; ``[PAD]`` has id 0. Saved as a single ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from retrieval.io import atomic_write_text

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
        """Learn a vocabulary of about ``vocab_size`` tokens from ``captions`` (may be empty: BPE then keeps
        the 256-byte alphabet). Training is deterministic: the same captions give the same tokenizer in
        every process."""
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer {kind!r}; expected one of {list(KINDS)}")
        texts = [c for c in captions if isinstance(c, str)]
        normalizer = normalizers.Sequence(
            [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        )
        if kind == "bpe":
            tokenizer = Tokenizer(models.BPE())
            tokenizer.normalizer = normalizer
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tokenizer.decoder = decoders.ByteLevel()
            alphabet = pre_tokenizers.ByteLevel.alphabet()
            target = vocab_size
        else:
            # A BPE model over a sorted character alphabet (merge ties then break the same way in every
            # process), turned into a WordPiece vocabulary: every learned piece as a word start and as a
            # "##" continuation, tokenized greedily longest-match-first as in BERT.
            tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
            tokenizer.normalizer = normalizer
            tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            alphabet = sorted(
                {ch for text in texts for ch in normalizer.normalize_str(text) if not ch.isspace()}
            )
            target = max(len(SPECIAL_TOKENS) + len(alphabet), (vocab_size + len(SPECIAL_TOKENS)) // 2)
        trainer = trainers.BpeTrainer(
            vocab_size=target, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        if kind == "wordpiece":
            pieces = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
            vocab: dict[str, int] = {}
            for piece in pieces:
                for token in (piece,) if piece in SPECIAL_TOKENS else (piece, f"##{piece}"):
                    vocab.setdefault(token, len(vocab))
            tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
            tokenizer.normalizer = normalizer
            tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tokenizer.decoder = decoders.WordPiece()
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
