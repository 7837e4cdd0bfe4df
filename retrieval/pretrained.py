"""Naming a model: one string for a folder saved by the toolkit, a transformers CLIP / SigLIP folder,
a Hugging Face hub id (``org/name``, optionally ``@revision``) or an open_clip checkpoint, told apart
without being told. open_clip checkpoints are named as open_clip names them: ``hf-hub:org/name``
(a hub repo of open_clip files), ``open_clip:ARCH/TAG`` (its pretrained weights, e.g.
``open_clip:ViT-B-32/laion2b_s34b_b79k``), ``open_clip:ARCH/PATH`` (a local weight file of that
architecture), or a local folder / weight file with ``open_clip_config.json`` beside it.

:func:`resolve_model` turns the name into a :class:`ModelSource`: the local folder holding the files,
what kind of folder it is, and where it came from. Hub ids go through the standard Hugging Face
cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) with
``huggingface_hub.snapshot_download``: a model downloaded once (or placed there by
``hf download``) loads offline afterwards, and ``HF_HUB_OFFLINE=1`` never touches the network.
:meth:`ModelSource.info` is what a collection records beside the model's fingerprint.

Loading is :func:`retrieval.model.load_model`; this module only finds and describes the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from retrieval.towers.hf import DUAL_MODELS
from retrieval.towers.open_clip_files import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    OpenCLIPCheckpoint,
    find_weights,
)

__all__ = [
    "ModelSource",
    "describe_model_info",
    "file_sha256",
    "hub_cache_dir",
    "open_clip_checkpoint",
    "resolve_model",
    "weights_sha256",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_FILE = "retrieval_model.json"
# What a hub snapshot needs for a CLIP / SigLIP model: configs, tokenizer and processor files, weights.
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
# Not for transformers: sub-folders (onnx/, other frameworks' exports) and OpenCLIP's own weight files.
HUB_IGNORED = ["*/*", "open_clip_*"]
HUB_FALLBACK_WEIGHTS = ["pytorch_model*.bin"]  # older repos without safetensors
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
# What a hub snapshot needs for an open_clip model: its config, weights and tokenizer files.
OPEN_CLIP_PATTERNS = [OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS[0], "*.json", "*.txt", "*.model"]
OPEN_CLIP_FALLBACK = ["open_clip_pytorch_model.bin"]
OPEN_CLIP_IGNORED = ["*/*"]  # sub-folders; the transformers weights some repos also hold match no pattern
OPEN_CLIP_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_PREFIX = "open_clip:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "on", "yes", "true"}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a named model's files are and where they came from.

    ``kind``: ``"toolkit"`` (saved by ``TwinEncoder.save``, e.g. a training run's ``best/``),
    ``"transformers"`` (a ``CLIPModel`` / ``SiglipModel`` checkpoint) or ``"open_clip"`` (open_clip's
    config and weight file). ``hub_id`` and ``revision`` (the resolved commit) are set for hub ids;
    ``path`` is then the cached snapshot folder. For open_clip, ``weights`` is the weight file and
    ``open_clip_name`` the ``ARCH`` or ``ARCH/TAG`` it was named by (whose config applies when no
    ``open_clip_config.json`` lies beside the weights).
    """

    name: str  # how to name the same files again: an absolute folder, or "org/name@<commit>"
    kind: str
    path: Path
    hub_id: str | None = None
    revision: str | None = None
    requested_revision: str | None = None  # what the name asked for ("main" when it said nothing)
    weights: Path | None = None  # open_clip: the weight file
    open_clip_name: str | None = None  # open_clip: "ARCH" or "ARCH/TAG" when named so

    @property
    def label(self) -> str:
        """A short human name: the hub id, or the folder."""
        return self.hub_id or str(self.path)

    def info(self) -> dict[str, Any]:
        """What a collection records about the model (``indexes.Collection.create(model_info=...)``):
        the hub id and resolved revision, or the folder and the sha256 of its weight files."""
        if self.hub_id is not None:
            out: dict[str, Any] = {"source": "hub", "id": self.hub_id, "revision": self.revision}
            if self.requested_revision not in (None, self.revision):
                out["requested_revision"] = self.requested_revision
        elif self.weights is not None:  # an open_clip folder or weight file
            named_file = self.name != str(self.path)
            where = str(self.weights) if named_file else str(self.path)
            out = {"source": "file" if named_file else "folder", "path": where}
            out["weights_sha256"] = file_sha256(self.weights)
        else:
            out = {"source": "folder", "path": str(self.path), "weights_sha256": weights_sha256(self.path)}
        out["format"] = self.kind
        if self.kind == "open_clip":
            out["model"] = self.name  # open_clip names are not folders: how to load the same files again
            if self.open_clip_name:
                out["open_clip"] = self.open_clip_name
        base = _base_model(self.path) if self.kind == "toolkit" else None
        if base:
            out["base_model"] = base
        return out


def resolve_model(name: str | os.PathLike[str]) -> ModelSource:
    """The :class:`ModelSource` for ``name``: an existing folder (toolkit or transformers layout), else
    a hub id ``org/name[@revision]`` fetched through the Hugging Face cache (a name without ``/`` that
    is no folder is taken for a mistyped folder).

    Raises ``FileNotFoundError`` for a path that does not exist or a hub id that is neither cached
    nor downloadable (naming the cache folder and the command to run), ``ValueError`` for a folder
    of another kind (saying what was expected) or a malformed name.
    """
    text = os.fspath(name).strip()
    if not text:
        raise ValueError(
            "empty model name: give a model folder or a hub id such as openai/clip-vit-base-patch32"
        )
    if text.startswith(HF_HUB_PREFIX):
        repo_id, _, revision = text[len(HF_HUB_PREFIX) :].partition("@")
        _check_repo_id(repo_id, text)
        return _open_clip_hub_source(repo_id, revision or None)
    if text.startswith(OPEN_CLIP_PREFIX):
        return _open_clip_named(text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            return open_clip_file_source(path)
        return folder_source(path)
    repo_id, _, revision = text.partition("@")
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
    if looks_like_path or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise FileNotFoundError(
            f"model {text!r} is neither an existing folder nor a hub id (org/name[@revision]): "
            "check the path, or name a Hugging Face model such as openai/clip-vit-base-patch32 (open_clip "
            "models: hf-hub:org/name, open_clip:ARCH/TAG, or a weight file with open_clip_config.json beside it)"
        )
    return _hub_source(repo_id, revision or None)


def _check_repo_id(repo_id: str, text: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"model {text!r}: {repo_id!r} is not a hub id; expected hf-hub:org/name[@revision], "
            "e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )


def folder_source(path: Path) -> ModelSource:
    """The :class:`ModelSource` of a local folder, after checking it holds a model we can load."""
    path = path.resolve()
    kind = folder_kind(path)
    if kind == "open_clip":
        return ModelSource(name=str(path), kind=kind, path=path, weights=find_weights(path))
    return ModelSource(name=str(path), kind=kind, path=path)


def open_clip_file_source(path: Path, arch: str | None = None) -> ModelSource:
    """An open_clip weight file: with ``open_clip_config.json`` beside it, or of architecture ``arch``."""
    path = path.resolve()
    if path.suffix not in OPEN_CLIP_FILE_SUFFIXES:
        raise ValueError(
            f"{path} is a file; expected a model folder, a hub id (org/name[@revision]) or an open_clip "
            f"weight file ({', '.join(OPEN_CLIP_FILE_SUFFIXES)}) with {OPEN_CLIP_CONFIG} beside it"
        )
    if arch is None and not (path.parent / OPEN_CLIP_CONFIG).is_file():
        raise ValueError(
            f"open_clip weight file {path} has no {OPEN_CLIP_CONFIG} beside it: put the model's config there "
            f'({{"model_cfg": ..., "preprocess_cfg": ...}}) or name the architecture: open_clip:ARCH/{path}'
        )
    name = f"{OPEN_CLIP_PREFIX}{arch}/{path}" if arch else str(path)
    return ModelSource(name=name, kind="open_clip", path=path.parent, weights=path, open_clip_name=arch)


def _open_clip_named(text: str) -> ModelSource:
    """``open_clip:ARCH/TAG[@revision]`` (pretrained weights on the hub) or ``open_clip:ARCH/PATH``."""
    from retrieval.towers.open_clip_names import arch_config, pretrained_repo

    rest = text[len(OPEN_CLIP_PREFIX) :]
    arch, sep, tag = rest.partition("/")
    if not arch or not sep or not tag:
        raise ValueError(
            f"model {text!r}: expected open_clip:ARCH/TAG (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k) or "
            "open_clip:ARCH/PATH to a local weight file"
        )
    if "/" in tag or Path(tag).expanduser().is_file() or tag.endswith(OPEN_CLIP_FILE_SUFFIXES):
        file = Path(tag).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"model {text!r}: no weight file {file}")
        arch_config(arch)  # an unknown architecture fails here, before any weight is read
        return open_clip_file_source(file, arch=arch)
    tag, _, revision = tag.partition("@")
    repo_id, _ = pretrained_repo(arch, tag)
    source = _open_clip_hub_source(repo_id, revision or None, named=f"{arch}/{tag}")
    return dataclasses.replace(source, name=f"{OPEN_CLIP_PREFIX}{arch}/{tag}@{source.revision}")


def open_clip_checkpoint(source: ModelSource) -> OpenCLIPCheckpoint:
    """The config, preprocessing, weights and tokenizer of an ``open_clip`` :class:`ModelSource`: the
    ``open_clip_config.json`` beside the weights, else the config of the architecture it was named by
    (with the pretrained tag's QuickGELU and preprocessing)."""
    from retrieval.towers.open_clip_names import arch_config, pretrained_repo

    if source.kind != "open_clip" or source.weights is None:
        raise ValueError(f"{source.label} is not an open_clip checkpoint")
    config_path = source.weights.parent / OPEN_CLIP_CONFIG
    if config_path.is_file():
        return OpenCLIPCheckpoint.from_config_file(config_path, source.weights)
    if not source.open_clip_name:
        raise ValueError(f"open_clip weights {source.weights} have no {OPEN_CLIP_CONFIG} beside them")
    arch, _, tag = source.open_clip_name.partition("/")
    model_cfg = arch_config(arch)
    preprocess: dict[str, Any] = {}
    if tag and not Path(tag).is_absolute():
        _, settings = pretrained_repo(arch, tag)
        if settings.pop("quick_gelu", False):
            model_cfg["quick_gelu"] = True
        preprocess = settings
    folder = source.weights.parent
    tokenizer = folder if any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")) else None
    return OpenCLIPCheckpoint(model_cfg, preprocess, source.weights, tokenizer)


def folder_kind(path: Path) -> str:
    """``"toolkit"`` or ``"transformers"``; ``ValueError`` saying what was expected otherwise."""
    expected = (
        f"expected a model saved by the toolkit ({CONFIG_FILE}, {WEIGHTS_FILE}, {FORMAT_FILE}: a training "
        f"run's best/ or final/ folder) or a transformers CLIP/SigLIP checkpoint ({CONFIG_FILE} with "
        f"model_type {' or '.join(sorted(DUAL_MODELS))}, weights, tokenizer and processor files) or an "
        f"open_clip checkpoint ({OPEN_CLIP_CONFIG} and open_clip's weights)"
    )
    config_path = path / CONFIG_FILE
    if not config_path.is_file() and (path / OPEN_CLIP_CONFIG).is_file():
        if find_weights(path) is None:
            raise ValueError(
                f"{path} holds an {OPEN_CLIP_CONFIG} but none of open_clip's weight files "
                f"({', '.join(OPEN_CLIP_WEIGHTS)})"
            )
        return "open_clip"
    if not config_path.is_file():
        raise ValueError(f"{path} holds no {CONFIG_FILE}: {expected}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config_path} is not readable JSON ({exc}): {expected}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type is None:
        if not (path / WEIGHTS_FILE).is_file():
            raise ValueError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}: {expected}")
        return "toolkit"
    if model_type not in DUAL_MODELS:
        raise ValueError(
            f"{path} is a transformers {model_type!r} checkpoint, not a two-tower model: {expected}. "
            f"A single backbone can be a tower of a new model: model.image_tower=hf:{path} (or model.text_tower)"
        )
    if not _weight_files(path):
        raise ValueError(
            f"{path} is a {model_type} checkpoint without weights (*.safetensors or *.bin): {expected}"
        )
    return "transformers"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (as huggingface_hub does
    at import): ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network at all."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _snapshot(
    repo_id: str,
    revision: str | None,
    patterns: list[str],
    ignored: list[str],
    fallback: list[str],
    has_weights: Any,
) -> Path:
    """The cached snapshot folder of ``repo_id`` with the files ``patterns`` name (downloading what is
    missing unless offline; ``fallback`` files too when the first pass found no weights)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RevisionNotFoundError

    cache = hub_cache_dir()
    offline = hub_offline()
    shown = f"{repo_id}@{revision}" if revision else repo_id
    command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=offline,
                allow_patterns=patterns,
                ignore_patterns=ignored,
            )
        )
        if not has_weights(folder) and not offline:
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache,
                    allow_patterns=fallback,
                    ignore_patterns=ignored,
                )
            )
    except RevisionNotFoundError as exc:
        raise ValueError(f"the hub model {repo_id} has no revision {revision!r}: {exc}") from exc
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub could not be reached"
        raise FileNotFoundError(
            f"model {shown!r} is not in the Hugging Face cache {cache} and {why}: download it once where "
            f"the hub is reachable (`{command}`, or any command here without HF_HUB_OFFLINE), or give a "
            "local model folder"
        ) from exc
    except HfHubHTTPError as exc:  # not found, gated, private: nothing cached to fall back on
        raise FileNotFoundError(
            f"model {shown!r} could not be fetched from the Hugging Face hub and is not in the cache "
            f"{cache}: {exc}. Check the id (and `hf auth login` for gated models)"
        ) from exc
    except Exception as exc:  # an incomplete cached snapshot and similar
        if type(exc).__name__ != "IncompleteSnapshotError":
            raise
        raise FileNotFoundError(
            f"the cached copy of {shown!r} in {cache} is incomplete: run `{command}` where the hub is reachable"
        ) from exc
    return folder


def _hub_source(repo_id: str, revision: str | None) -> ModelSource:
    shown = f"{repo_id}@{revision}" if revision else repo_id
    folder = _snapshot(
        repo_id, revision, HUB_PATTERNS, HUB_IGNORED, HUB_FALLBACK_WEIGHTS, lambda f: bool(_weight_files(f))
    )
    try:
        kind = folder_kind(folder)
    except ValueError as exc:
        hint = "" if (folder / CONFIG_FILE).is_file() else f" (an open_clip repo? name it hf-hub:{repo_id})"
        raise ValueError(f"hub model {shown!r} (cached in {folder}): {exc}{hint}") from exc
    if kind == "open_clip":
        return _open_clip_hub_source(repo_id, revision)
    commit = folder.name
    return ModelSource(
        name=f"{repo_id}@{commit}",
        kind=kind,
        path=folder,
        hub_id=repo_id,
        revision=commit,
        requested_revision=revision or "main",
    )


def _open_clip_hub_source(repo_id: str, revision: str | None, named: str | None = None) -> ModelSource:
    """A hub repo of open_clip files (``hf-hub:org/name``; ``named``: the ``ARCH/TAG`` that led here)."""
    shown = f"{repo_id}@{revision}" if revision else repo_id
    folder = _snapshot(
        repo_id,
        revision,
        OPEN_CLIP_PATTERNS,
        OPEN_CLIP_IGNORED,
        OPEN_CLIP_FALLBACK,
        lambda f: find_weights(f) is not None,
    )
    weights = find_weights(folder)
    if weights is None:
        raise FileNotFoundError(
            f"hub model {shown!r} (cached in {folder}) has none of open_clip's weight files "
            f"({', '.join(OPEN_CLIP_WEIGHTS)}): run `hf download {repo_id}` where the hub is reachable, or "
            f"name a transformers model as {repo_id} (without hf-hub:)"
        )
    if named is None and not (folder / OPEN_CLIP_CONFIG).is_file():
        raise FileNotFoundError(
            f"hub model {shown!r} (cached in {folder}) has no {OPEN_CLIP_CONFIG}: name it by its architecture "
            "and tag (open_clip:ARCH/TAG) or download the whole repo (`hf download " + repo_id + "`)"
        )
    commit = folder.name
    return ModelSource(
        name=f"{HF_HUB_PREFIX}{repo_id}@{commit}",
        kind="open_clip",
        path=folder,
        hub_id=repo_id,
        revision=commit,
        requested_revision=revision or "main",
        weights=weights,
        open_clip_name=named,
    )


def describe_model_info(info: Any) -> str | None:
    """A model name for messages from a recorded :meth:`ModelSource.info` (``None`` when unknown)."""
    if not isinstance(info, dict):
        return None
    if info.get("source") == "hub" and info.get("id"):
        return f"{info['id']}@{info['revision']}" if info.get("revision") else str(info["id"])
    return str(info["path"]) if info.get("path") else None


def _weight_files(path: Path) -> list[Path]:
    found = {p for pattern in _WEIGHT_GLOBS for p in path.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not p.name.startswith("open_clip_"))


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 over the folder's weight files (name and bytes, in name order)."""
    digest = hashlib.sha256()
    for file in _weight_files(Path(path)):
        digest.update(f"\0{file.name}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _base_model(path: Path) -> dict[str, Any] | None:
    """The pretrained model a toolkit folder was fine-tuned from, as its format file records it."""
    try:
        info = json.loads((path / FORMAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = info.get("base_model") if isinstance(info, dict) else None
    return base if isinstance(base, dict) else None
