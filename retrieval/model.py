"""TwinEncoder: an image tower and a text tower, each followed by a projection head into one
shared space of unit vectors, plus the learnable temperature (and bias) the losses use.

Radford et al. 2021 (CLIP) for the two-tower layout and the log-parametrised temperature;
Zhai et al. 2023 (SigLIP) for the logit bias; Zhai et al. 2022 (LiT) for locked towers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retrieval import encoding
from retrieval.config import ModelConfig
from retrieval.encoding import pick_device
from retrieval.io import atomic_write_json, fsync_file, staged_directory
from retrieval.match import MATCH_HEAD_DIR, MatchHead
from retrieval.pretrained import (
    CONFIG_FILE,
    FORMAT_FILE,
    WEIGHTS_FILE,
    ModelSource,
    folder_source,
    resolve_model,
)
from retrieval.towers import ImageTower, TextTower, build_image_tower, build_text_tower, lock

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# ModelConfig fields that say how a model trains, not what it is: the ones a fine-tuning run may set
# on a pretrained model (see TwinEncoder.set_training).
TRAINING_FIELDS = (
    "lock_image",
    "lock_text",
    "unfreeze_image_layers",
    "unfreeze_text_layers",
    "learn_logit_scale",
)
# Config fields that change what the embeddings are; training-only switches (locks, init values) do not.
# Tower names are left out on purpose: "hf:<path>" would make the same weights differ by where they were read.
_FINGERPRINT_FIELDS = ("embed_dim", "projection", "pooling", "context_length", "shared")


def _projection(
    kind: str, in_dim: int, out_dim: int, what: str, hidden: int = 0, dropout: float = 0.0
) -> nn.Module:
    """A projection head. Without dropout the layouts are the plain ones (``Linear``; ``Linear, GELU,
    Linear``) that models saved before these options use; with it, ``Dropout`` comes first (and
    after the mlp's activation), which is what a head on a large locked feature needs not to learn
    the training images by heart."""
    if kind == "linear":
        layer = nn.Linear(in_dim, out_dim, bias=False)
        return nn.Sequential(nn.Dropout(dropout), layer) if dropout else layer
    if kind == "mlp":
        width = hidden or in_dim
        if dropout:
            return nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, width),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(width, out_dim),
            )
        return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, out_dim))
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(
                f"projection='none' needs the {what} output ({in_dim}) to equal embed_dim ({out_dim}); "
                "set embed_dim to it or use projection='linear'"
            )
        return nn.Identity()
    raise ValueError(f"unknown projection {kind!r}; expected one of ['linear', 'mlp', 'none']")


class TwinEncoder(nn.Module):
    """Image tower + text tower + projection heads -> float32 unit vectors of size ``embed_dim``.

    ``logit_scale`` is the log of the similarity multiplier (losses receive ``logit_scale.exp()``);
    ``logit_bias`` exists when ``config.use_bias``. Build one with :func:`build_model`,
    :func:`load_model` (any model name), :meth:`load` or :meth:`from_pretrained`.

    ``source`` says where a loaded model's files came from (:class:`retrieval.pretrained.ModelSource`,
    ``None`` for a model built in memory); ``base_model`` is the pretrained checkpoint a fine-tuned
    model started from (recorded by :meth:`save`, ``None`` when unknown).
    """

    def __init__(self, config: ModelConfig, image_tower: ImageTower, text_tower: TextTower) -> None:
        super().__init__()
        self.config = config
        self.source: ModelSource | None = None
        self.base_model: dict[str, Any] | None = None
        self.embed_dim = config.embed_dim
        self.image_tower = image_tower
        self.text_tower = text_tower
        if config.shared:
            if not hasattr(text_tower, "share_trunk"):
                raise ValueError(
                    "shared=True needs image_tower='vit' and text_tower='transformer' (one trunk for both "
                    f"modalities), received {config.image_tower!r} and {config.text_tower!r}"
                )
            text_tower.share_trunk(image_tower)  # type: ignore[operator]
        head = {"hidden": config.projection_hidden, "dropout": config.projection_dropout}
        self.image_projection = _projection(
            config.projection, image_tower.output_dim, config.embed_dim, "image tower", **head
        )
        self.text_projection = (
            self.image_projection
            if config.shared
            else _projection(
                config.text_projection or config.projection,
                text_tower.output_dim,
                config.embed_dim,
                "text tower",
                **head,
            )
        )
        self.logit_scale = nn.Parameter(
            torch.tensor(float(config.init_logit_scale)), requires_grad=config.learn_logit_scale
        )
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.init_logit_bias))) if config.use_bias else None
        )
        self._apply_locks()
        # the match head re-ranks; kept outside the module tree, so it is not part of the fingerprint
        self.__dict__["match_head"] = None

    def _apply_locks(self) -> None:
        config = self.config
        if config.image_locked or config.unfreeze_image_layers:
            lock(self.image_tower, config.unfreeze_image_layers, what="image tower")
        if config.lock_text or config.unfreeze_text_layers:
            lock(self.text_tower, config.unfreeze_text_layers, what="text tower")

    def set_training(self, **switches: Any) -> TwinEncoder:
        """Set how the model trains (the :data:`TRAINING_FIELDS` of its config: locked or partly
        unfrozen towers, a learnable temperature) without touching its weights; returns ``self``."""
        unknown = sorted(set(switches) - set(TRAINING_FIELDS))
        if unknown:
            raise ValueError(f"set_training takes {list(TRAINING_FIELDS)}, received {unknown}")
        self.config = self.config.replace(**switches)
        for param in [*self.image_tower.parameters(), *self.text_tower.parameters()]:
            param.requires_grad_(True)
        self.logit_scale.requires_grad_(self.config.learn_logit_scale)
        self._apply_locks()
        return self

    def base_model_info(self) -> dict[str, Any] | None:
        """The pretrained checkpoint this model is or started from: ``base_model`` when recorded, else
        the source of a model loaded from a transformers checkpoint or the hub."""
        if self.base_model is not None:
            return self.base_model
        if self.source is not None and self.source.kind in ("transformers", "open_clip"):
            return self.source.info()
        return None

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def train(self, mode: bool = True) -> TwinEncoder:
        """Like ``nn.Module.train``, but a fully locked tower stays in eval mode (no dropout, LiT)."""
        super().train(mode)
        for tower, locked in (
            (self.image_tower, self._fully_locked(self.image_tower)),
            (self.text_tower, self._fully_locked(self.text_tower)),
        ):
            if locked:
                tower.eval()
        return self

    @staticmethod
    def _fully_locked(tower: nn.Module) -> bool:
        return not any(p.requires_grad for p in tower.parameters())

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """The image tower's preprocessing: PIL image -> ``[3, H, W]`` float32 (``train`` adds augmentation)."""
        return self.image_tower.image_transform(train)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids": [B, L], "attention_mask": [B, L]}`` (int64, CPU)."""
        if isinstance(texts, str):
            raise ValueError(
                f"tokenize expects a list of strings, received one string {texts[:40]!r}: wrap it in [...]"
            )
        return self.text_tower.tokenize(list(texts))

    # ------------------------------------------------------- training path
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit vectors (differentiable)."""
        features = self.image_tower(pixel_values.to(self.device))  # [B, F_img]
        return F.normalize(self.image_projection(features).float(), dim=-1)  # [B, D]

    def _ids_and_mask(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = tokens["input_ids"].to(self.device)  # [B, L]
        attention_mask = tokens.get("attention_mask")
        mask = (
            torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        )  # [B, L]
        return input_ids, mask

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> ``[B, D]`` unit vectors (differentiable)."""
        features = self.text_tower(*self._ids_and_mask(tokens))  # [B, F_txt]
        return F.normalize(self.text_projection(features).float(), dim=-1)  # [B, D]

    def image_grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> the image tower's grid before pooling, ``[B, N, C]`` (no projection)."""
        return self.image_tower.grid_features(pixel_values.to(self.device)).float()  # [B, N, C]

    def text_token_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> the text tower's per-token features ``[B, L, H]`` (no projection)."""
        return self.text_tower.token_features(*self._ids_and_mask(tokens)).float()  # [B, L, H]

    def forward(
        self, pixel_values: torch.Tensor, tokens: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_features [B, D], text_features [B, D])``."""
        return self.image_features(pixel_values), self.text_features(tokens)

    # ------------------------------------------------------ inference path
    def encode_images(
        self,
        images: Sequence[Image.Image | str | os.PathLike[str]],
        batch_size: int = encoding.IMAGE_BATCH_SIZE,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Encode images (PIL images, paths or ``tar://`` references) -> ``[N, D]`` float32 CPU unit vectors.

        Through :func:`retrieval.encoding.encode_images`: batched, under ``torch.inference_mode``,
        on ``device`` (default: where the model is; the model goes back afterwards), in eval mode
        (a model in train mode returns to it), the next batch decoded in a helper thread while the
        current one runs. A path that cannot be decoded raises :class:`retrieval.data.ImageDecodeError`.
        """
        return encoding.encode_images(
            self, images, batch_size=batch_size, device=device, progress=progress
        ).vectors

    def encode_texts(
        self,
        texts: Sequence[str],
        batch_size: int = encoding.TEXT_BATCH_SIZE,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Encode captions -> ``[N, D]`` float32 CPU unit vectors, through
        :func:`retrieval.encoding.encode_texts` (batched, the next batch tokenized while one runs)."""
        return encoding.encode_texts(
            self, texts, batch_size=batch_size, device=device, progress=progress
        ).vectors

    # ---------------------------------------------------------------- matching
    def attach_match_head(self, head: Any) -> None:
        """Use ``head`` (a :class:`retrieval.match.MatchHead`) for :meth:`match` and re-ranking;
        :meth:`save` writes it to ``match_head/`` and :meth:`load` reads it back."""
        if head is not None and int(head.dim) != int(self.embed_dim):
            raise ValueError(f"match head takes dim {head.dim}, this model embeds in dim {self.embed_dim}")
        self.__dict__["match_head"] = head

    def match(
        self,
        images: Sequence[Image.Image | str | os.PathLike[str]],
        texts: Sequence[str],
        device: str | torch.device | None = None,
    ) -> Any:
        """Calibrated probability that ``images[i]`` and ``texts[i]`` match: ``[N]`` float32 numpy array.

        Needs a match head (:meth:`attach_match_head`, or one saved beside the model).
        """
        head = self.__dict__.get("match_head")
        if head is None:
            raise ValueError(
                "this model has no match head: train one (retrieval.match.train_match_head, or "
                "`retrieval match train`) and attach it"
            )
        if len(images) != len(texts):
            raise ValueError(f"match takes as many images as texts; received {len(images)} and {len(texts)}")
        u = self.encode_images(images, device=device)  # [N, D]
        v = self.encode_texts(texts, device=device)  # [N, D]
        return head.probabilities(u, v)

    # ------------------------------------------------------------- identity
    def preprocess_config(self) -> dict[str, Any]:
        """What the model does to inputs before the weights see them (part of :meth:`fingerprint`)."""
        return {
            "image": self.image_tower.preprocess_config(),
            "text": self.text_tower.preprocess_config(),
            "model": {name: getattr(self.config, name) for name in _FINGERPRINT_FIELDS},
            "towers": [type(self.image_tower).__name__, type(self.text_tower).__name__],
        }

    def fingerprint(self) -> str:
        """sha256 hex digest of every tensor (by name, in sorted order: dtype, shape, bytes) and of
        :meth:`preprocess_config`. Equal across save/load and processes; any weight change alters it."""
        digest = hashlib.sha256(b"retrieval-twin-encoder-v1\0")
        digest.update(json.dumps(self.preprocess_config(), sort_keys=True, default=str).encode("utf-8"))
        for name, tensor in sorted(_unique_state(self).items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"\0{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` + ``model.safetensors`` + tower assets (tokenizer, processor, backbone
        config) to ``directory``, atomically: a temporary sibling folder is renamed into place. An existing
        model folder is replaced; any other non-empty folder raises ``FileExistsError``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        if directory.exists() and (
            not directory.is_dir() or (any(directory.iterdir()) and not (directory / WEIGHTS_FILE).exists())
        ):
            raise FileExistsError(
                f"{directory} exists and is not a saved model: choose a new or empty folder"
            )
        with staged_directory(directory) as tmp:
            self.config.save(tmp / CONFIG_FILE)
            save_model(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            fsync_file(tmp / WEIGHTS_FILE)
            self.image_tower.save_assets(tmp / "image_tower")
            self.text_tower.save_assets(tmp / "text_tower")
            info: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "fingerprint": self.fingerprint(),
                "embed_dim": self.embed_dim,
            }
            base = self.base_model_info()
            if base is not None:
                info["base_model"] = base
            atomic_write_json(tmp / FORMAT_FILE, info, indent=2)
            if self.__dict__.get("match_head") is not None:
                self.__dict__["match_head"].save(tmp / MATCH_HEAD_DIR)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> TwinEncoder:
        """Rebuild a model saved by :meth:`save` (offline: nothing is fetched), on ``device``
        (default: CUDA when available), in eval mode (call ``.train()`` to fine-tune it)."""
        from safetensors.torch import load_model as load_weights

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} is missing: expected a folder written by TwinEncoder.save"
                )
        info_path = directory / FORMAT_FILE
        saved_info: dict[str, Any] = {}
        if info_path.is_file():
            saved_info = json.loads(info_path.read_text(encoding="utf-8"))
            version = saved_info.get("format_version", FORMAT_VERSION)
            if int(version) > FORMAT_VERSION:
                raise ValueError(
                    f"{directory} was saved in model format {version}, this version reads up to {FORMAT_VERSION}: "
                    "upgrade siamese-retrieval to load it"
                )
        config = ModelConfig.load(directory / CONFIG_FILE)
        image_assets = directory / "image_tower"
        text_assets = directory / "text_tower"
        image_tower = build_image_tower(config, assets=image_assets if image_assets.is_dir() else None)
        text_tower = build_text_tower(config, assets=text_assets if text_assets.is_dir() else None)
        model = cls(config, image_tower, text_tower)
        load_weights(model, str(directory / WEIGHTS_FILE), strict=True)
        model.source = folder_source(directory) if (directory / CONFIG_FILE).is_file() else None
        base = saved_info.get("base_model")
        model.base_model = base if isinstance(base, dict) else None
        model = model.to(pick_device(device)).eval()
        if (directory / MATCH_HEAD_DIR).is_dir():
            model.attach_match_head(MatchHead.load(directory / MATCH_HEAD_DIR, device=model.device))
        return model

    @classmethod
    def from_pretrained(
        cls, id_or_path: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> TwinEncoder:
        """Any model name :func:`load_model` takes: a folder saved by :meth:`save`, or a transformers
        ``CLIPModel`` / ``SiglipModel`` checkpoint (local folder, or hub id ``org/name[@revision]``
        through the Hugging Face cache) with its projections, temperature, bias, processor and
        tokenizer; returned in eval mode."""
        return load_model(id_or_path, device=device)

    @classmethod
    def _from_transformers(cls, source: ModelSource, device: str | torch.device | None = None) -> TwinEncoder:
        if source.kind == "open_clip":
            from retrieval.pretrained import open_clip_checkpoint
            from retrieval.towers.open_clip import load_open_clip

            parts = load_open_clip(open_clip_checkpoint(source), name=source.name.partition("@")[0])
        else:
            from retrieval.towers.hf import load_dual_encoder

            parts = load_dual_encoder(str(source.path), name=source.label)
        config, image_tower, text_tower, scale, bias = parts
        model = cls(config, image_tower, text_tower)
        with torch.no_grad():
            model.logit_scale.fill_(scale)
            if model.logit_bias is not None and bias is not None:
                model.logit_bias.fill_(bias)
        model.source = source
        return model.to(pick_device(device)).eval()


def load_model(name: str | os.PathLike[str], device: str | torch.device | None = None) -> TwinEncoder:
    """The model ``name`` names, in eval mode on ``device`` (default: CUDA when available).

    ``name`` is a folder saved by the toolkit (e.g. a training run's ``best/``), a transformers
    CLIP / SigLIP folder (``save_pretrained``), a Hugging Face hub id ``org/name`` with an
    optional ``@revision``, fetched through the standard Hugging Face cache (offline once cached),
    or an open_clip checkpoint (``hf-hub:org/name``, ``open_clip:ARCH/TAG``, a weight file with its
    ``open_clip_config.json``); see :func:`retrieval.pretrained.resolve_model`. Every command that takes ``--model`` calls this.
    The returned model's ``source`` says where it came from.
    """
    source = resolve_model(name)
    if source.kind == "toolkit":
        model = TwinEncoder.load(source.path, device=device)
        model.source = source
        return model
    return TwinEncoder._from_transformers(source, device=device)


def build_model(
    config: ModelConfig, captions: Iterable[str] | None = None, device: str | torch.device | None = None
) -> TwinEncoder:
    """A fresh :class:`TwinEncoder` for ``config``. Trained tokenizers (``gru``, ``transformer``) learn
    from ``captions``; without captions they keep a byte-level alphabet (BPE). Placed on ``device``
    (default: CUDA when available)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"build_model expects a ModelConfig, received {type(config).__name__}")
    image_tower = build_image_tower(config)
    text_tower = build_text_tower(config, captions)
    model = TwinEncoder(config, image_tower, text_tower)
    return model.to(pick_device(device))


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with shared tensors kept once (under their first name in sorted order)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    unique: dict[str, torch.Tensor] = {}
    for name, tensor in sorted(model.state_dict().items()):
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique
