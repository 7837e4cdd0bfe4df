"""Towers around transformers backbones (``"hf:<hub id or local folder>"``).

Image: any ``AutoModel`` vision backbone (CLIP / SigLIP vision, ViT, ConvNeXt, DINOv2, ...) with its
own ``AutoImageProcessor``; the feature is the backbone's pooled output (ViT / DeiT: the final [CLS]
state; the mean of the last hidden states when there is no pooled output). Text: any ``AutoModel`` text encoder with its ``AutoTokenizer``, pooled by
masked mean, first token (CLS) or the model's own pooler. For CLIP and SigLIP checkpoints the tower
is that model's half, with CLIP's projection, so its features equal ``get_image_features`` /
``get_text_features``.

Saved towers keep the backbone config and the processor / tokenizer files, so a saved model is
rebuilt offline with ``AutoModel.from_config`` and the weights from ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retrieval.config import ModelConfig
from retrieval.data.transforms import ProcessorTransform
from retrieval.io import atomic_write_text
from retrieval.towers.base import ImageTower, TextTower, masked_mean

TOWER_FILE = "tower.json"
# Two-tower checkpoints whose halves we can take apart: type -> (vision, vision proj, text, text proj).
DUAL_MODELS: dict[str, tuple[str, str | None, str, str | None]] = {
    "clip": ("vision_model", "visual_projection", "text_model", "text_projection"),
    "siglip": ("vision_model", None, "text_model", None),
}
_HEAD_NAMES = {"post_layernorm", "layernorm", "final_layer_norm", "pooler", "head", "norm", "layer_norm"}
_POOLINGS = ("auto", "mean", "cls", "pooler")
# Vision models whose pooler is an extra dense+tanh layer (often untrained, e.g. DINO ViTs): use the
# final [CLS] state instead, as the ViT paper does.
_CLS_IMAGE_MODELS = {"vit", "deit"}


def _float32() -> dict[str, Any]:
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def _load_backbone(source: str, half: str) -> tuple[nn.Module, nn.Module | None, Any]:
    """``(backbone, projection or None, hf config of the whole checkpoint)`` for ``half`` in {"vision", "text"}."""
    from transformers import AutoConfig, AutoModel

    hf_config = AutoConfig.from_pretrained(source)
    if hf_config.model_type in DUAL_MODELS:
        full = AutoModel.from_pretrained(source, **_float32())
        vision, vision_proj, text, text_proj = DUAL_MODELS[hf_config.model_type]
        body, proj = (vision, vision_proj) if half == "vision" else (text, text_proj)
        return getattr(full, body), (getattr(full, proj) if proj else None), hf_config
    return AutoModel.from_pretrained(source, **_float32()), None, hf_config


def _skip_init() -> contextlib.AbstractContextManager[Any]:
    """transformers' context that skips random initialisation (its module moved between versions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _rebuild_backbone(assets: Path) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    import transformers
    from transformers import AutoConfig, AutoModel

    meta_path = assets / TOWER_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: the saved model folder is incomplete")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    hf_config = AutoConfig.from_pretrained(assets)
    model_class = getattr(transformers, str(meta.get("class", "")), None)
    with _skip_init():  # every weight is overwritten from model.safetensors (strictly) right after
        if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
            backbone = model_class(hf_config).to(torch.float32)
        else:
            backbone = AutoModel.from_config(hf_config, **_float32())
    projection = nn.Linear(*meta["projection"], bias=False) if meta.get("projection") else None
    return backbone, projection, meta


def _largest_module_list(module: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child):
            size = sum(p.numel() for p in child.parameters())
            if best is None or size > best[0]:
                best = (size, name, child)
    if best is None:
        raise ValueError(f"cannot find the repeated blocks of {type(module).__name__} to lock or unfreeze")
    return best[1], best[2]


def _head_modules(backbone: nn.Module, blocks_name: str, projection: nn.Module | None) -> list[nn.Module]:
    heads = [
        child
        for name, child in backbone.named_modules()
        if name
        and name.split(".")[-1] in _HEAD_NAMES
        and name.count(".") <= 1
        and "embed" not in name
        and not name.startswith(blocks_name)
    ]
    return heads + ([projection] if projection is not None else [])


def _output_dim(hf_config: Any, projection: nn.Module | None) -> int:
    if isinstance(projection, nn.Linear):
        return projection.out_features
    for key in ("projection_size", "hidden_size", "dim", "d_model"):  # SigLIP's text head projects
        value = getattr(hf_config, key, None)
        if isinstance(value, int):
            return value
    sizes = getattr(hf_config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(
        f"cannot tell the feature size of {type(hf_config).__name__}; use a backbone with hidden_size"
    )


_SPLIT_VISION_MODELS = {"clip_vision_model", "siglip_vision_model"}


def _run_block(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One transformer block (or a norm) on ``hidden`` without an attention mask; transformers 4.x
    blocks return tuples and take a causal mask, 5.x blocks return the hidden states."""
    if isinstance(block, nn.LayerNorm):
        return block(hidden)
    try:
        out = block(hidden, None)
    except TypeError:
        out = block(hidden, None, None)
    return out[0] if isinstance(out, tuple) else out


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in dict(value).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    if hasattr(value, "value"):  # enums (resampling filters)
        return _plain(value.value)
    return str(value)


class HFImageTower(ImageTower):
    """A transformers vision backbone (+ optional projection) with its image processor."""

    def __init__(
        self, backbone: nn.Module, projection: nn.Module | None, processor: Any, source: str
    ) -> None:
        super().__init__()
        self.cls_pooling = backbone.config.model_type in _CLS_IMAGE_MODELS
        if self.cls_pooling and isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None  # unused: no dead weights in the checkpoint or the optimizer
        self.backbone = backbone
        self.projection = projection if projection is not None else nn.Identity()
        self.processor = processor
        self.source = source
        self._blocks_name, self._blocks = _largest_module_list(backbone)
        self.output_dim = _output_dim(backbone.config, projection)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=pixel_values)
        return self._pool(out)  # [B, D]

    def grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's ``last_hidden_state`` as rows: ``[B, T, H]`` (transformers: every token,
        [CLS] included where the model has one) or a ``[B, C, h, w]`` map flattened to ``[B, h * w, C]``."""
        hidden = self.backbone(pixel_values=pixel_values).last_hidden_state  # [B, T, H] or [B, C, h, w]
        return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden

    def _pool(self, out: Any) -> torch.Tensor:
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state  # [B, T, H] or [B, C, h, w]
            if hidden.dim() == 4:
                pooled = hidden.mean(dim=(2, 3))  # [B, C]
            else:
                pooled = hidden[:, 0] if self.cls_pooling else hidden.mean(dim=1)  # [B, H]
        return self.projection(pooled.flatten(1))  # [B, D]

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        return ProcessorTransform(self.processor, train=train)

    def preprocess_config(self) -> dict[str, Any]:
        return _plain(ProcessorTransform(self.processor).config())

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def head(self) -> list[nn.Module]:
        return _head_modules(
            self.backbone, self._blocks_name, self.projection if self.has_projection else None
        )

    @property
    def has_projection(self) -> bool:
        return isinstance(self.projection, nn.Linear)

    # ------------------------------------------------- partial adaptation (locked prefix, trained suffix)
    def _splittable(self) -> bool:
        """CLIP and SigLIP vision transformers: embeddings, (CLIP: pre-norm), the blocks, post-norm and
        (SigLIP) the attention-pooling head, run here in that order on the cached hidden states."""
        kind = getattr(self.backbone.config, "model_type", "")
        parts = ("embeddings", "encoder", "post_layernorm")
        return kind in _SPLIT_VISION_MODELS and all(hasattr(self.backbone, name) for name in parts)

    def split_point(self) -> int | None:
        """The first transformer block that trains (the number of blocks when only the final norm, the
        pooling head or the projection train); None when nothing trains, the patch embedding trains, or
        the backbone is not a CLIP / SigLIP vision transformer (it then runs whole)."""
        if not self._splittable():
            return None
        prefix = [self.backbone.embeddings, getattr(self.backbone, "pre_layrnorm", None)]
        if any(p.requires_grad for m in prefix if m is not None for p in m.parameters()):
            return None
        for index, block in enumerate(self._blocks):
            if any(p.requires_grad for p in block.parameters()):
                return index
        return len(self._blocks) if any(p.requires_grad for p in self.parameters()) else None

    def _check_split(self, split: int) -> None:
        if not self._splittable():
            raise NotImplementedError(
                f"{type(self.backbone).__name__} does not split into a prefix and a suffix "
                f"(only {sorted(_SPLIT_VISION_MODELS)} do)"
            )
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= len(self._blocks):
            raise ValueError(f"a split point is a block index between 0 and {len(self._blocks)}, received {split!r}")

    def prefix_modules(self, split: int) -> list[nn.Module]:
        self._check_split(split)
        pre = getattr(self.backbone, "pre_layrnorm", None)
        return [self.backbone.embeddings, *([pre] if pre is not None else []), *self._blocks[:split]]

    def encode_prefix(self, pixel_values: torch.Tensor, split: int) -> torch.Tensor:
        """The hidden states entering block ``split``, flattened: ``[B, tokens * hidden]``."""
        hidden = self.backbone.embeddings(pixel_values)  # [B, T, H]
        for module in self.prefix_modules(split)[1:]:
            hidden = _run_block(module, hidden)
        return hidden.flatten(1)  # [B, T * H]

    def forward_suffix(self, prefix: torch.Tensor, split: int) -> torch.Tensor:
        self._check_split(split)
        width = int(self.backbone.config.hidden_size)
        if prefix.shape[1] % width:
            raise ValueError(
                f"prefix rows of {prefix.shape[1]} numbers are not whole tokens of {width}: were they encoded "
                "by another tower?"
            )
        hidden = prefix.reshape(prefix.shape[0], -1, width)  # [B, T, H]
        for block in self._blocks[split:]:
            hidden = _run_block(block, hidden)
        if getattr(self.backbone.config, "model_type", "") == "siglip_vision_model":
            last = self.backbone.post_layernorm(hidden)  # [B, T, H]
            pooled = self.backbone.head(last) if getattr(self.backbone, "use_head", False) else last.mean(dim=1)
        else:  # CLIP: the class token's state, normalised
            pooled = self.backbone.post_layernorm(hidden[:, 0])  # [B, H]
        return self.projection(pooled.flatten(1))  # [B, D]

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        proj = [self.projection.in_features, self.projection.out_features] if self.has_projection else None
        meta = {"source": self.source, "class": type(self.backbone).__name__, "projection": proj}
        atomic_write_text(directory / TOWER_FILE, json.dumps(meta, indent=2) + "\n")


class HFTextTower(TextTower):
    """A transformers text encoder (+ optional projection) with its tokenizer.

    ``pooling``: "mean" (masked mean of the last hidden states), "cls" (first token) or "pooler"
    (the model's pooled output, e.g. CLIP's end-of-text state, SigLIP's head). ``padding`` is
    "longest" or "max_length" (SigLIP was trained on max-length padding).

    ``words=True`` appends a second part to the pooled output: the mean of the caption's static word
    embeddings (the backbone's input embedding table; special and padding tokens left out),
    layer-normalised, so ``output_dim`` grows by the table's width (the simple word-embedding model,
    SWEM-aver, of Shen et al. 2018, "Baseline Needs More Love"). A sentence encoder's pooled vector
    is no sum of its words, so a head cannot read "outline" or "off" off it the same way in every
    caption; in the average each word adds its own vector, so a linear head weighs a word alike
    wherever it occurs, and a word unseen in training still brings its pretrained meaning. No
    weights of its own.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection: nn.Module | None,
        tokenizer: Any,
        *,
        pooling: str,
        padding: str,
        max_length: int,
        source: str,
        words: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"unknown text pooling {pooling!r}; expected one of {list(_POOLINGS)}")
        if pooling != "pooler" and isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None  # e.g. BERT's dense+tanh pooler: unused with mean / CLS pooling
        self.backbone = backbone
        self.projection = projection if projection is not None else nn.Identity()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.padding = padding
        self.max_length = int(max_length)
        self.source = source
        self._pass_mask = "attention_mask" in getattr(tokenizer, "model_input_names", ["attention_mask"])
        self._blocks_name, self._blocks = _largest_module_list(backbone)
        self.output_dim = _output_dim(backbone.config, projection)
        self.words = bool(words)
        self.word_dim = 0
        if self.words:
            table = backbone.get_input_embeddings()
            if not isinstance(table, nn.Embedding):
                raise ValueError(
                    f"text tower {source!r} has no word embedding table ({type(table).__name__}); "
                    "set model.text_words=false"
                )
            self.word_dim = table.embedding_dim
            self.output_dim += self.word_dim
            # 1 for a word, 0 for the tokenizer's special tokens ([CLS], [SEP], [PAD], ...): a gather
            # (not a membership test) so exported graphs hold it as a constant
            counted = torch.ones(table.num_embeddings)
            special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < table.num_embeddings]
            counted[special] = 0.0
            self.register_buffer("_word_counted", counted, persistent=False)

    @property
    def has_projection(self) -> bool:
        return isinstance(self.projection, nn.Linear)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("tokenize expects a list of strings, e.g. ['a red car']")
        if not texts:
            empty = torch.zeros((0, 1), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encoded = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"].long()  # [B, L]
        mask = encoded.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if mask is None else mask.long()  # [B, L]
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        kwargs = {"attention_mask": attention_mask} if self._pass_mask else {}
        return self.backbone(input_ids=input_ids, **kwargs)

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's ``last_hidden_state``: ``[B, L, H]`` (before any projection)."""
        return self._run(input_ids, attention_mask).last_hidden_state  # [B, L, H]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self._run(input_ids, attention_mask)
        if self.pooling == "pooler":
            pooled = out.pooler_output  # [B, H]
            if pooled is None:
                raise ValueError(f"{self.source} has no pooled output: use pooling='mean' or 'cls'")
        elif self.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]  # [B, H]
        else:
            pooled = masked_mean(out.last_hidden_state, attention_mask)  # [B, H]
        if not self.words:
            return self.projection(pooled)  # [B, D]
        return torch.cat([self.projection(pooled), self._word_part(input_ids, attention_mask)], dim=-1)

    def _word_part(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The layer-normalised mean of the words' input embeddings ``[B, E]`` (zeros for a caption of
        special tokens only)."""
        embedded = self.backbone.get_input_embeddings()(input_ids)  # [B, L, E]
        counted = self._word_counted[input_ids] * attention_mask.to(embedded.dtype)  # [B, L]
        mean = masked_mean(embedded, counted)  # [B, E]
        return F.layer_norm(mean, (self.word_dim,))  # [B, E]

    def _vocab_sha256(self) -> str:
        """The digest of the tokenizer's vocabulary, computed once per tokenizer object (every model
        save asks for it; hashing 30,000 entries took a tenth of a second each time)."""
        cached = self.__dict__.get("_vocab_digest")
        if cached is not None and cached[0] is self.tokenizer and cached[1] == len(self.tokenizer):
            return cached[2]
        vocab = sorted(self.tokenizer.get_vocab().items())
        digest = hashlib.sha256(json.dumps(vocab).encode("utf-8")).hexdigest()
        self.__dict__["_vocab_digest"] = (self.tokenizer, len(self.tokenizer), digest)
        return digest

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "kind": "hf_tokenizer",
            "vocab_sha256": self._vocab_sha256(),
            "lowercase": bool(getattr(self.tokenizer, "do_lower_case", False)),
            "padding": self.padding,
            "max_length": self.max_length,
            "pooling": self.pooling,
            **({"words": True} if self.words else {}),  # only when on: other fingerprints stay as they were
        }

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def head(self) -> list[nn.Module]:
        return _head_modules(
            self.backbone, self._blocks_name, self.projection if self.has_projection else None
        )

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        proj = [self.projection.in_features, self.projection.out_features] if self.has_projection else None
        meta = {
            "source": self.source,
            "class": type(self.backbone).__name__,
            "projection": proj,
            "pooling": self.pooling,
            "padding": self.padding,
            "max_length": self.max_length,
        }
        atomic_write_text(directory / TOWER_FILE, json.dumps(meta, indent=2) + "\n")


def build_hf_image_tower(config: ModelConfig, source: str, assets: Path | None) -> HFImageTower:
    """The image tower for ``"hf:<source>"``: from the hub / a folder, or rebuilt from saved ``assets``."""
    from transformers import AutoImageProcessor

    if assets is not None:
        backbone, projection, meta = _rebuild_backbone(assets)
        return HFImageTower(backbone, projection, AutoImageProcessor.from_pretrained(assets), meta["source"])
    backbone, projection, _ = _load_backbone(source, "vision")
    return HFImageTower(backbone, projection, AutoImageProcessor.from_pretrained(source), source)


def _text_settings(backbone: nn.Module, tokenizer: Any, config: ModelConfig) -> tuple[str, str, int]:
    model_type = backbone.config.model_type
    if config.pooling not in _POOLINGS:
        raise ValueError(f"unknown pooling {config.pooling!r}; expected one of {list(_POOLINGS)}")
    pooling = config.pooling
    if pooling == "auto":
        pooling = "pooler" if model_type in ("clip_text_model", "siglip_text_model") else "mean"
    limits = [config.context_length, getattr(backbone.config, "max_position_embeddings", None)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    padding = "max_length" if model_type == "siglip_text_model" else "longest"
    return pooling, padding, min(v for v in limits if isinstance(v, int) and v > 0)


def build_hf_text_tower(config: ModelConfig, source: str, assets: Path | None) -> HFTextTower:
    """The text tower for ``"hf:<source>"``: from the hub / a folder, or rebuilt from saved ``assets``."""
    from transformers import AutoTokenizer

    if assets is not None:
        backbone, projection, meta = _rebuild_backbone(assets)
        return HFTextTower(
            backbone,
            projection,
            AutoTokenizer.from_pretrained(assets),
            pooling=meta["pooling"],
            padding=meta["padding"],
            max_length=meta["max_length"],
            source=meta["source"],
            words=config.text_words,
        )
    backbone, projection, _ = _load_backbone(source, "text")
    tokenizer = AutoTokenizer.from_pretrained(source)
    pooling, padding, max_length = _text_settings(backbone, tokenizer, config)
    return HFTextTower(
        backbone,
        projection,
        tokenizer,
        pooling=pooling,
        padding=padding,
        max_length=max_length,
        source=source,
        words=config.text_words,
    )


def load_dual_encoder(
    source: str, name: str | None = None
) -> tuple[ModelConfig, HFImageTower, HFTextTower, float, float | None]:
    """Take a transformers CLIPModel / SiglipModel checkpoint apart: ``(config, image tower, text tower,
    logit_scale, logit_bias)`` with both towers ending in the checkpoint's own projections.

    ``source`` is what transformers reads (a folder or hub id); ``name`` what the towers are called
    (``"hf:<name>"``; default ``source``), e.g. the hub id of a cached snapshot folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    name = name or source
    hf_config = AutoConfig.from_pretrained(source)
    if hf_config.model_type not in DUAL_MODELS:
        raise ValueError(
            f"{source} is a {hf_config.model_type!r} checkpoint; from_pretrained supports {sorted(DUAL_MODELS)} "
            "two-tower models or a folder saved by TwinEncoder.save; for a single backbone use "
            "build_model(ModelConfig(image_tower='hf:...'))"
        )
    full = AutoModel.from_pretrained(source, **_float32())
    return dual_encoder_parts(
        full, AutoImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source), name
    )


def dual_encoder_parts(
    full: nn.Module, processor: Any, tokenizer: Any, name: str, logit_bias: float | None = None
) -> tuple[ModelConfig, HFImageTower, HFTextTower, float, float | None]:
    """:func:`load_dual_encoder` on a ``CLIPModel`` / ``SiglipModel`` in memory with its image
    processor and tokenizer (``logit_bias``: a bias the model itself has no place for)."""
    vision, vision_proj, text, text_proj = DUAL_MODELS[full.config.model_type]
    text_model = getattr(full, text)
    max_length = int(text_model.config.max_position_embeddings)
    if logit_bias is None and hasattr(full, "logit_bias"):
        logit_bias = float(full.logit_bias.detach().reshape(-1)[0])
    config = ModelConfig(
        image_tower=f"hf:{name}",
        text_tower=f"hf:{name}",
        embed_dim=_output_dim(
            getattr(full, vision).config, getattr(full, vision_proj) if vision_proj else None
        ),
        projection="none",
        pooling="pooler",
        context_length=max_length,
        use_bias=logit_bias is not None,
        init_logit_scale=float(full.logit_scale.detach().reshape(-1)[0]),
        init_logit_bias=logit_bias if logit_bias is not None else -10.0,
    )
    image_tower = HFImageTower(
        getattr(full, vision), getattr(full, vision_proj) if vision_proj else None, processor, name
    )
    _, padding, _ = _text_settings(text_model, tokenizer, config)
    text_tower = HFTextTower(
        text_model,
        getattr(full, text_proj) if text_proj else None,
        tokenizer,
        pooling="pooler",
        padding=padding,
        max_length=max_length,
        source=name,
    )
    return config, image_tower, text_tower, config.init_logit_scale, logit_bias
