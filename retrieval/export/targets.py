"""``export_model``: a toolkit model to another library's format, by target name.

``EXPORT_TARGETS`` maps a name to a writer
``(model, folder, out, options) -> {"image": d, "text": d}``
that fills a fresh folder (which becomes ``out``) and checks, by loading it back with the target's own code, that its
embeddings equal the model's (``d``: the largest absolute difference of the unit vectors, within
the target's stated tolerance). :func:`export_model` stages the folder beside ``out`` and renames it
into place only when that check passed, with ``retrieval_export.json`` (what was exported, from
which model, how close) and, when asked, a Hugging Face model card (``README.md``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retrieval.export.check import check_embeddings
from retrieval.export.errors import ExportError
from retrieval.io import atomic_write_json, staged_directory

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_INFO", "EXPORT_TARGETS", "TOLERANCES", "ExportOptions", "ExportResult", "export_model"]

EXPORT_INFO = "retrieval_export.json"
# Largest absolute difference allowed between the toolkit's unit vectors and the export's (float32,
# CPU): transformers runs the very modules the toolkit runs; open_clip runs its own attention
# (torch's MultiheadAttention) on the same weights, which rounds differently.
TOLERANCES = {"transformers": 1e-5, "open_clip": 1e-4, "onnx": 1e-4}


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How to export, beyond the target."""

    model_card: bool = (
        False  # write README.md, a Hugging Face model card (transformers and open_clip targets)
    )
    report: str | None = (
        None  # an evaluation report (retrieval eval --out DIR, or its metrics.json) for the card
    )
    repo_id: str | None = None  # the hub repo the folder is meant for (card, open_clip's tokenizer name)
    data_description: str | None = None  # one or two sentences on the training data, for the card


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    target: str
    path: Path  # the export folder
    files: list[str]  # the files in it, sorted
    max_difference: dict[str, float]  # {"image": d, "text": d} against the toolkit model
    tolerance: float  # the bound those differences were checked against


# (model, folder to fill, the folder it becomes, options) -> {"image": d, "text": d}
Writer = Callable[[Any, Path, Path, ExportOptions], dict[str, float]]


def _export_transformers(model: Any, folder: Path, out: Path, options: ExportOptions) -> dict[str, float]:
    from transformers import AutoModel

    from retrieval.export.to_transformers import as_transformers

    full, processor, tokenizer = as_transformers(model)
    full.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _save_processor(full.config.model_type, processor, tokenizer, folder)
    _add_sentence_transformers(folder, full.config.model_type)
    reloaded = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return check_embeddings(
        model,
        lambda pixels: reloaded.get_image_features(pixel_values=pixels),
        lambda tokens: reloaded.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ),
        TOLERANCES["transformers"],
        "transformers",
    )


def _save_processor(model_type: str, processor: Any, tokenizer: Any, folder: Path) -> None:
    """``processor_config.json``, so ``AutoProcessor.from_pretrained`` finds both halves; image
    processors are recorded under their plain class name (``CLIPImageProcessor``), which every
    transformers version loads (transformers 5 picks its PIL or torchvision implementation)."""
    import transformers

    cls = getattr(transformers, {"clip": "CLIPProcessor", "siglip": "SiglipProcessor"}[model_type])
    try:
        cls(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    except (TypeError, ValueError) as exc:  # a tokenizer class the processor does not take
        logger.info(
            "no %s written (%s): AutoImageProcessor and AutoTokenizer load the folder", cls.__name__, exc
        )
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for suffix in ("Pil", "Fast"):
                text = text.replace(f'ImageProcessor{suffix}"', 'ImageProcessor"')
            path.write_text(text, encoding="utf-8")


def _add_sentence_transformers(folder: Path, model_type: str) -> None:
    """sentence-transformers' files (``modules.json``: the model, then a unit-length normalisation;
    SigLIP's texts padded to full length, as it was trained), written by sentence-transformers itself
    where a version that loads CLIP-style models (5.4 and later) is installed, so that
    ``SentenceTransformer(folder).encode(images or texts)`` gives the toolkit's unit vectors."""
    import shutil
    import tempfile

    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Normalize
    except ImportError:
        logger.info("sentence-transformers >= 5.4 is not installed: no sentence-transformers files written")
        return
    padding = {"text": {"padding": "max_length"}} if model_type == "siglip" else None
    st = SentenceTransformer(
        modules=[Transformer(str(folder), processing_kwargs=padding), Normalize()], device="cpu"
    )
    with tempfile.TemporaryDirectory() as tmp:
        st.save(tmp)
        for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            shutil.copyfile(Path(tmp) / name, folder / name)
        normalize = next(
            (p for p in Path(tmp).iterdir() if p.is_dir() and p.name.endswith("_Normalize")), None
        )
        if normalize is not None:
            shutil.copytree(normalize, folder / normalize.name)


def _export_open_clip(model: Any, folder: Path, out: Path, options: ExportOptions) -> dict[str, float]:
    from safetensors.torch import save_file

    from retrieval.export.to_open_clip import as_open_clip
    from retrieval.towers.open_clip import OPEN_CLIP_CONFIG, OpenCLIPCheckpoint, load_open_clip

    config, state, tokenizer = as_open_clip(model, _tokenizer_name(model, out, options))
    atomic_write_json(folder / OPEN_CLIP_CONFIG, config, indent=2)
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    if hasattr(tokenizer, "save_pretrained"):  # open_clip's own CLIP tokenizer ships with the package
        tokenizer.save_pretrained(folder)
    # loaded back as any open_clip checkpoint is loaded here (converted, or on the open_clip package)
    checkpoint = OpenCLIPCheckpoint.from_config_file(
        folder / OPEN_CLIP_CONFIG, folder / "open_clip_model.safetensors"
    )
    _, image_tower, text_tower, _, _ = load_open_clip(checkpoint, name="export-check")
    diffs = check_embeddings(
        model,
        lambda pixels: image_tower(pixels),
        lambda tokens: text_tower(tokens["input_ids"], tokens["attention_mask"]),
        TOLERANCES["open_clip"],
        "open_clip",
    )
    package = _open_clip_package()
    if package is not None:  # and by open_clip itself, where it is installed
        diffs = _check_with_open_clip(package, model, folder, tokenizer, config)
    return diffs


def _open_clip_package() -> Any:
    from retrieval.towers.open_clip_files import open_clip_package

    return open_clip_package()


def _check_with_open_clip(
    package: Any, model: Any, folder: Path, tokenizer: Any, config: dict[str, Any]
) -> dict[str, float]:
    oc_model, _, _ = package.create_model_and_transforms(f"local-dir:{folder}")
    oc_model = oc_model.eval()
    length = int(config["model_cfg"]["text_cfg"]["context_length"])

    def texts(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = tokens["input_ids"]  # [N, L]: padded to open_clip's fixed context length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        padded = torch.full((ids.shape[0], length), pad, dtype=ids.dtype)
        padded[:, : ids.shape[1]] = ids[:, :length]
        return oc_model.encode_text(padded)

    return check_embeddings(model, oc_model.encode_image, texts, TOLERANCES["open_clip"], "open_clip")


def _export_onnx(model: Any, folder: Path, out: Path, options: ExportOptions) -> dict[str, float]:
    """The ONNX target: image and text graphs (tower, head and normalisation) with dynamic batch and
    a JSON of their preprocessing, written by the exporter of the fast encoding path
    (:mod:`retrieval.export.to_onnx`), checked in ONNX Runtime against the toolkit's vectors."""
    from retrieval.export.onnx import onnxruntime_available
    from retrieval.export.to_onnx import write_onnx

    if not onnxruntime_available():
        raise ExportError("--to onnx needs onnx and onnxruntime: pip install onnx onnxruntime")
    return write_onnx(model, folder, TOLERANCES["onnx"])


EXPORT_TARGETS: dict[str, Writer] = {
    "transformers": _export_transformers,  # CLIPModel / SiglipModel folder with processor and tokenizer
    "open_clip": _export_open_clip,  # open_clip_config.json + open_clip_model.safetensors + tokenizer
    "onnx": _export_onnx,  # image/ and text/ graphs (tower, head, normalisation) + preprocess.json
}


def _tokenizer_name(model: Any, out: Path, options: ExportOptions) -> str:
    """What open_clip's config names as its Hugging Face tokenizer: the repo the folder is meant for,
    else the base model's hub repo (fine-tuning keeps the tokenizer), else the export folder."""
    if options.repo_id:
        return options.repo_id
    base = model.base_model_info() or {}
    if base.get("source") == "hub" and base.get("format") == "transformers" and base.get("id"):
        return str(base["id"])
    return str(out.resolve())


def export_model(
    model: Any, target: str, out: str | os.PathLike[str], options: ExportOptions | None = None
) -> ExportResult:
    """Export ``model`` (a :class:`retrieval.model.TwinEncoder`, or any name :func:`retrieval.model.load_model`
    takes) to ``target`` (a key of :data:`EXPORT_TARGETS`) in the folder ``out``.

    ``out`` must be new, empty, or an earlier export (it is replaced whole); the folder appears only
    when the export passed its check. Raises :class:`ExportError` when the target cannot express the
    model (saying which target can) or the check fails, ``ValueError`` for an unknown target,
    ``FileExistsError`` for an ``out`` holding anything else."""
    options = options or ExportOptions()
    if target not in EXPORT_TARGETS:
        raise ValueError(f"unknown export target {target!r}; expected one of {sorted(EXPORT_TARGETS)}")
    if options.model_card and target == "onnx":
        raise ValueError(
            "--model-card describes a transformers or open_clip export; the onnx target has none"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_INFO).is_file())):
        raise FileExistsError(f"{out} exists and is not an earlier export: choose a new or empty folder")
    if not hasattr(model, "fingerprint"):
        from retrieval.model import load_model

        model = load_model(model, device="cpu")
    with staged_directory(out) as tmp:
        diffs = EXPORT_TARGETS[target](model, tmp, out, options)
        info = _export_info(model, target, diffs, options)
        if options.model_card:
            from retrieval.export.card import model_card

            (tmp / "README.md").write_text(model_card(model, target, info, options), encoding="utf-8")
        atomic_write_json(tmp / EXPORT_INFO, info, indent=2)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    logger.info("exported to %s (%s): largest difference %s", out, target, diffs)
    return ExportResult(target, out, files, diffs, TOLERANCES[target])


def _export_info(model: Any, target: str, diffs: dict[str, float], options: ExportOptions) -> dict[str, Any]:
    import transformers

    import retrieval

    source = getattr(model, "source", None)
    info: dict[str, Any] = {
        "target": target,
        "model": source.name if source is not None else None,
        "fingerprint": model.fingerprint(),
        "embed_dim": int(model.embed_dim),
        "max_difference": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "tolerance": TOLERANCES[target],
        "versions": {
            "siamese-retrieval": getattr(retrieval, "__version__", None),
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        },
    }
    base = model.base_model_info()
    if base is not None:
        info["base_model"] = base
    if model.logit_bias is not None:
        info["logit_bias"] = float(model.logit_bias.detach())
    info["logit_scale"] = float(model.logit_scale.detach())
    if options.repo_id:
        info["repo_id"] = options.repo_id
    return json.loads(json.dumps(info, default=str))
