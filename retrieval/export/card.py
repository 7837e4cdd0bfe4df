"""A model card (``README.md``) for an exported model, in the Hugging Face format: YAML metadata
between ``---`` lines, then Markdown (Mitchell et al. 2019, "Model Cards for Model Reporting").

Everything it states is read from files on disk, never fetched: the model (towers, sizes, base
model, fingerprint), its training run when the model folder is a run's ``best/`` or ``final/``
(the run's ``config.json``), and an evaluation report written by ``retrieval eval --out DIR``
(its ``metrics.json``). What only the author knows (licence, data terms, limits) is left as
marked fields to fill in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TO_FILL", "model_card", "read_report"]

TO_FILL = "TO FILL IN"  # marks what only the author can state

_TRAINING_KEYS = (
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "precision",
    "seed",
)
_MODEL_SWITCHES = (
    "lock_image",
    "lock_text",
    "unfreeze_image_layers",
    "unfreeze_text_layers",
    "learn_logit_scale",
)


def read_report(path: str | Path) -> dict[str, Any]:
    """The summary of an evaluation report: ``metrics.json`` in the folder ``path`` (or the file)."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no evaluation report at {path}: expected the folder written by `retrieval eval DATA --model MODEL "
            "--out DIR` (its metrics.json)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(
            f"{file} is not readable JSON ({exc}): expected an evaluation report's metrics.json"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{file} has no 'metrics': expected an evaluation report's metrics.json")
    return data


def _run_config(model: Any) -> dict[str, Any] | None:
    """The TrainConfig of the run whose ``best/`` or ``final/`` folder the model was loaded from."""
    source = getattr(model, "source", None)
    if source is None or source.kind != "toolkit":
        return None
    path = Path(source.path).parent / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "train_data" in data else None


def _base_id(info: dict[str, Any]) -> str | None:
    base = info.get("base_model") or {}
    return str(base["id"]) if base.get("source") == "hub" and base.get("id") else None


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n  - {item}" for item in items)


def _front_matter(target: str, family: str, info: dict[str, Any]) -> str:
    base = _base_id(info)
    lines = [
        "---",
        f"library_name: {'open_clip' if target == 'open_clip' else 'transformers'}",
        "pipeline_tag: zero-shot-image-classification",
        "tags:" + _yaml_list([family, "image-text-retrieval", "feature-extraction", "siamese-retrieval"]),
        f"license: other  # {TO_FILL}: the licence you release this under; it must respect the base model's and the data's",
        f"license_name: to-fill-in  # {TO_FILL}, or remove with license_name when license is a standard id",
    ]
    if base:
        lines.append(f"base_model: {base}")
    lines.append("---")
    return "\n".join(lines)


def _evaluation(report: dict[str, Any] | None) -> str:
    if report is None:
        return (
            "No evaluation report was given. Measure the model on held-out pairs with "
            "`retrieval eval DATA --model MODEL --out DIR` and export again with `--report DIR`."
        )
    metrics = report["metrics"]
    rows = "\n".join(
        f"| `{name}` | {value:.4f} |" if isinstance(value, (int, float)) else f"| `{name}` | {value} |"
        for name, value in sorted(metrics.items())
    )
    sizes = f"{report.get('n_images', '?')} images and {report.get('n_texts', '?')} captions"
    note = ""
    if report.get("model_fingerprint"):
        note = f" The report was made by the model with fingerprint `{report['model_fingerprint'][:16]}…`."
    return (
        f"Retrieval on {sizes} (the report's `metrics.json`; R@k: the share of queries with a relevant "
        f"item in the top k; t2i: text to image, i2t: image to text).{note}\n\n| metric | value |\n|---|---|\n{rows}"
    )


def _training(run: dict[str, Any] | None, info: dict[str, Any], options: Any) -> tuple[str, str]:
    data = options.data_description
    if run is None:
        return (
            data or f"{TO_FILL}: what the model was trained on (source, size, licence of the data).",
            f"{TO_FILL}: not known from the model folder (export a training run's best/ or final/ folder to fill it in).",
        )
    if not data:
        val = run.get("val_data") or "a held-out share of the training images"
        data = f"Pairs from `{Path(str(run['train_data'])).name}`; validation on {val}. {TO_FILL}: describe the data and its terms."
    model_cfg = run.get("model") or {}
    settings = [f"| `{k}` | {run[k]} |" for k in _TRAINING_KEYS if k in run]
    settings += [f"| `model.{k}` | {model_cfg[k]} |" for k in _MODEL_SWITCHES if k in model_cfg]
    start = f"Fine-tuned from `{_base_id(info)}`" if _base_id(info) else "Trained"
    table = "\n".join(["| setting | value |", "|---|---|", *settings])
    return data, f"{start} with siamese-retrieval (`retrieval train`).\n\n{table}"


def _usage(target: str, family: str, name: str) -> str:
    if target == "open_clip":
        return (
            "```python\nimport open_clip\n\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms('hf-hub:{name}')  # or 'local-dir:FOLDER'\n"
            f"tokenizer = open_clip.get_tokenizer('hf-hub:{name}')\n"
            "image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)\n"
            "text_features = model.encode_text(tokenizer(['a photo of a dog']), normalize=True)\n```"
        )
    model_cls, padding = ("CLIPModel", "") if family == "clip" else ("SiglipModel", ", padding='max_length'")
    return (
        f"```python\nfrom transformers import AutoProcessor, {model_cls}\n\n"
        f"model = {model_cls}.from_pretrained('{name}')\nprocessor = AutoProcessor.from_pretrained('{name}')\n"
        f"inputs = processor(text=['a photo of a dog'], images=[image], return_tensors='pt'{padding})\n"
        "image_features = model.get_image_features(pixel_values=inputs['pixel_values']).pooler_output\n"
        "text_features = model.get_text_features(input_ids=inputs['input_ids']).pooler_output\n"
        "# unit vectors: the cosine similarity of these is the model's score\n```\n\n"
        "With siamese-retrieval: `retrieval embed PHOTOS --model " + name + " --out photos.coll`."
    )


def model_card(model: Any, target: str, info: dict[str, Any], options: Any) -> str:
    """The text of ``README.md`` for an export of ``model`` to ``target`` (``info``: its
    ``retrieval_export.json``; ``options``: :class:`retrieval.export.targets.ExportOptions`)."""
    from retrieval.export.to_transformers import transformers_family

    family = transformers_family(model)
    report = read_report(options.report) if options.report else None
    data, training = _training(_run_config(model), info, options)
    name = options.repo_id or "ORG/NAME"
    title = (
        options.repo_id.split("/")[-1] if options.repo_id else f"{family.upper()} image-text embedding model"
    )
    bias = f", logit bias {info['logit_bias']:.3f}" if "logit_bias" in info else ""
    base = _base_id(info)
    return f"""{_front_matter(target, family, info)}

# {title}

A {family.upper()} twin encoder: an image tower and a text tower that map pictures and captions to
{info["embed_dim"]}-dimensional unit vectors whose cosine similarity scores how well they match.
{("Fine-tuned from [" + base + "](https://huggingface.co/" + base + "). ") if base else ""}Exported by
siamese-retrieval to {"open_clip's" if target == "open_clip" else "transformers'"} format; its embeddings
equal the toolkit model's within {info["tolerance"]:.0e} (largest difference measured at export:
image {info["max_difference"]["image"]:.1e}, text {info["max_difference"]["text"]:.1e}).

## Model details

| | |
|---|---|
| architecture | {family.upper()} ({"open_clip CLIP" if target == "open_clip" else ("CLIPModel" if family == "clip" else "SiglipModel")}) |
| embedding size | {info["embed_dim"]} |
| temperature | logit scale {info["logit_scale"]:.3f} (exp: {_exp(info["logit_scale"]):.1f}){bias} |
| fingerprint | `{info["fingerprint"]}` (siamese-retrieval's hash of the weights and preprocessing) |

## Intended use

Text-to-image and image-to-text search, image-to-image similarity and zero-shot classification on
images like those it was trained on. {TO_FILL}: the uses you intend and those you do not.

Out of scope: decisions about people (identity, emotion, attributes), surveillance, and any use the
base model's licence or card excludes. Like every CLIP-style model it carries the biases of its
training pairs.

## Training data

{data}

## Training settings

{training}

## Evaluation

{_evaluation(report)}

## How to use

{_usage(target, family, name)}

## Licence

{TO_FILL}: the licence of these weights (set `license` above). They derive from
{("`" + base + "`") if base else "the base model"}, whose licence and terms bind this model too, and
from the training data, whose terms may restrict it further.
"""


def _exp(value: float) -> float:
    import math

    return math.exp(value)
