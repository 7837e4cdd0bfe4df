"""The small interface every tower implements, and LiT-style locking.

An image tower maps ``pixel_values [B, 3, H, W]`` to features ``[B, output_dim]`` and declares its
own preprocessing (``image_transform``); a text tower tokenizes strings (``tokenize``) and maps the
tokens to ``[B, output_dim]``. Both list their repeated ``blocks()`` (input to output) and the
``head()`` modules after them, which is what partial unfreezing works on. Towers may also expose
what they pool, read by the cross-attention match head: ``grid_features`` (image, ``[B, N, C]``)
and ``token_features`` (text, ``[B, L, H]``); the base classes' versions raise a clear
``NotImplementedError`` for towers that have no such features.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from retrieval.io import atomic_write_text


class ImageTower(nn.Module, abc.ABC):
    """Base class of image towers; a subclass that misses an abstract method cannot be built."""

    output_dim: int

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, output_dim]
        ...

    @abc.abstractmethod
    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]: ...

    def grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, N, C]
        """The spatial grid before pooling (one row per cell or patch), what a cross-attention match
        head attends over. Towers that cannot give one raise ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not expose grid features (grid_features), which the "
            "cross-attention match head needs: use a cnn, vit or hf image tower"
        )

    def preprocess_config(self) -> dict[str, Any]:
        """JSON-able description of the preprocessing (part of the model fingerprint)."""
        return self.image_transform(False).config()  # type: ignore[attr-defined]

    @abc.abstractmethod
    def blocks(self) -> list[nn.Module]: ...

    def head(self) -> list[nn.Module]:
        return []

    # ------------------------------------------------- partial adaptation (locked prefix, trained suffix)
    def split_point(self) -> int | None:
        """Where the tower splits into a locked prefix and a trained suffix, as its parameters'
        ``requires_grad`` say now: the index (in the tower's own units) of the first part that trains,
        or None when the tower cannot be split that way (then it runs whole every step) or nothing
        trains. Towers that split implement :meth:`prefix_modules`, :meth:`encode_prefix` and
        :meth:`forward_suffix` so that ``forward_suffix(encode_prefix(x, s), s) == forward(x)``."""
        return None

    def prefix_modules(self, split: int) -> list[nn.Module]:
        """The modules of the locked prefix before ``split`` (what its fingerprint hashes)."""
        raise NotImplementedError(f"{type(self).__name__} does not split into a prefix and a suffix")

    def encode_prefix(self, pixel_values: torch.Tensor, split: int) -> torch.Tensor:  # [B, 3, H, W] -> [B, P]
        """The locked prefix's output, one flat float row per image (cacheable: it depends on the
        image, the preprocessing and the prefix's weights only)."""
        raise NotImplementedError(f"{type(self).__name__} does not split into a prefix and a suffix")

    def forward_suffix(self, prefix: torch.Tensor, split: int) -> torch.Tensor:  # [B, P] -> [B, output_dim]
        """The rest of :meth:`forward` from :meth:`encode_prefix`'s rows (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} does not split into a prefix and a suffix")

    def save_assets(self, directory: Path) -> None:
        """Write what a rebuild needs besides the weights (processor, backbone config); by default the
        preprocessing settings, for people reading the folder."""
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.preprocess_config(), indent=2, sort_keys=True, default=str)
        atomic_write_text(directory / "preprocess.json", text + "\n")


class TextTower(nn.Module, abc.ABC):
    """Base class of text towers; a subclass that misses an abstract method cannot be built."""

    output_dim: int

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:  # [B, L] -> [B, D]
        ...

    def token_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:  # [B, L] -> [B, L, H]
        """One feature per token before pooling (padding positions hold anything: mask them), what a
        cross-attention match head reads. Towers that cannot give them raise ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not expose token features (token_features), which the "
            "cross-attention match head needs: use a gru, transformer or hf text tower"
        )

    @abc.abstractmethod
    def preprocess_config(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def blocks(self) -> list[nn.Module]: ...

    def head(self) -> list[nn.Module]:
        return []

    def save_assets(self, directory: Path) -> None:
        """Write what a rebuild needs besides the weights (tokenizer, backbone config)."""


def lock(tower: nn.Module, unfreeze_last: int = 0, *, what: str = "tower") -> None:
    """Freeze every parameter of ``tower`` except its last ``unfreeze_last`` blocks and, when any block
    is trained, the head after them (LiT: Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image
    text Tuning")."""
    blocks = tower.blocks()  # type: ignore[operator]
    if unfreeze_last < 0 or unfreeze_last > len(blocks):
        raise ValueError(
            f"cannot unfreeze the last {unfreeze_last} layers of the {what}: it has {len(blocks)} blocks; "
            f"pass a number between 0 and {len(blocks)}"
        )
    for parameter in tower.parameters():
        parameter.requires_grad_(False)
    if unfreeze_last:
        for module in [*blocks[len(blocks) - unfreeze_last :], *tower.head()]:  # type: ignore[operator]
            for parameter in module.parameters():
                parameter.requires_grad_(True)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1: ``[B, L, H]``, ``[B, L]`` -> ``[B, H]``."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B, H]


def unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with shared tensors kept once (under their first name in sorted order)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    unique: dict[str, torch.Tensor] = {}
    for name, tensor in sorted(module.state_dict().items()):
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def state_digest(digest: Any, module: nn.Module) -> None:
    """Feed every tensor of ``module`` (by name, in sorted order: dtype, shape, bytes) to ``digest``."""
    for name, tensor in sorted(unique_state(module).items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes


def tower_split(model: object) -> int | None:
    """The split point of ``model``'s image tower (its locked prefix before it), or None when the
    tower does not split, trains whole or does not train at all."""
    tower = getattr(model, "image_tower", None)
    if (
        tower is None
        or getattr(getattr(model, "config", None), "shared", False)
        or not hasattr(tower, "split_point")
    ):
        return None
    split = tower.split_point()
    return split if split else None  # 0: nothing locked before the first trained part


def prefix_fingerprint(tower: ImageTower, split: int) -> str:
    """sha256 hex digest of a tower's locked prefix before ``split``: its class, its preprocessing, the
    split and every tensor of :meth:`ImageTower.prefix_modules`. Models that share the prefix (the
    same pretrained tower, whatever was trained after it) share this, and so do the prefix outputs
    cached under it."""
    digest = hashlib.sha256(b"retrieval-tower-prefix-v1\0")
    digest.update(f"{type(tower).__name__}\0{split}\0".encode())
    digest.update(json.dumps(tower.preprocess_config(), sort_keys=True, default=str).encode("utf-8"))
    for index, module in enumerate(tower.prefix_modules(split)):
        digest.update(f"\0module {index}\0".encode())
        state_digest(digest, module)
    return digest.hexdigest()


def tower_fingerprint(tower: nn.Module) -> str:
    """sha256 hex digest of a tower alone: its class, its preprocessing and every tensor. Two models
    sharing a tower (the same locked pretrained weights) share this; what is computed from the
    tower's output alone (an exported graph, cached features) is keyed by it."""
    digest = hashlib.sha256(b"retrieval-tower-v1\0")
    digest.update(type(tower).__name__.encode())
    preprocess = tower.preprocess_config()  # type: ignore[operator]
    digest.update(json.dumps(preprocess, sort_keys=True, default=str).encode("utf-8"))
    state_digest(digest, tower)
    return digest.hexdigest()
