"""A classifier on the shared space: an image, a text or both, fused, predicting a label column.

The twin encoders stay frozen; :class:`FusionClassifier` reads their unit vectors. Two fusions:

* ``"concat"`` -- ``[u, v, u * v, m_img, m_txt]`` (a missing modality is a zero vector, the
  masks ``m`` say which is present) through an MLP;
* ``"attention"`` -- a learned class token attends over the present modality tokens (one
  multi-head attention layer with a key padding mask, Vaswani et al. 2017), then a linear layer.

Training draws, per example and epoch, image-only, text-only or both (modality dropout), so one
classifier serves all three inputs. :func:`evaluate_classifier` measures accuracy, a per-class
report and the confusion matrix, beside zero-shot classification by prompts (the nearest class
prompt embedding, :func:`retrieval.evaluate.class_embeddings`) on the same examples;
:func:`write_classification_report` writes them to a folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import ClassifyConfig
from retrieval.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    settle_file,
    staged_directory,
)

__all__ = [
    "ClassificationReport",
    "FusionClassifier",
    "evaluate_classifier",
    "labelled_examples",
    "predict",
    "train_classifier",
    "write_classification_report",
]

INPUTS = ("image", "text", "both")
_WEIGHTS = "classifier.safetensors"
_META = "classifier.json"


class FusionClassifier(nn.Module):
    """``(image [B, D], text [B, D], present [B, 2] bool) -> class logits [B, C]`` (module docstring)."""

    def __init__(
        self, dim: int, classes: Sequence[str], fusion: str = "attention", hidden: int = 256
    ) -> None:
        super().__init__()
        if fusion not in ("concat", "attention"):
            raise ValueError(f"unknown fusion {fusion!r}; expected 'concat' or 'attention'")
        self.dim, self.classes, self.fusion, self.hidden = int(dim), list(classes), fusion, int(hidden)
        n = len(self.classes)
        if fusion == "concat":
            self.mlp = nn.Sequential(
                nn.Linear(3 * dim + 2, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, n)
            )
        else:
            self.modality = nn.Parameter(torch.zeros(2, dim))  # which token is the image, which the text
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.attention = nn.MultiheadAttention(dim, num_heads=4 if dim % 4 == 0 else 1, batch_first=True)
            self.norm = nn.LayerNorm(dim)
            self.out = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, n))

    def forward(self, image: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        m = present.to(image.dtype)  # [B, 2]
        u, v = image * m[:, :1], text * m[:, 1:]  # [B, D] each; a missing modality is zeros
        if self.fusion == "concat":
            return self.mlp(torch.cat([u, v, u * v, m], -1))  # [B, C]
        tokens = torch.stack([u + self.modality[0], v + self.modality[1]], 1)  # [B, 2, D]
        query = self.cls_token.expand(len(u), -1, -1)  # [B, 1, D]
        keys = torch.cat([query, tokens], 1)  # [B, 3, D]; the class token always present
        pad = torch.cat([torch.zeros_like(present[:, :1]), ~present.bool()], 1)  # [B, 3] True = ignore
        fused, _ = self.attention(query, keys, keys, key_padding_mask=pad)  # [B, 1, D]
        return self.out(self.norm(fused[:, 0] + query[:, 0]))  # [B, C]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the classifier (classes, fusion, weights) to ``directory``, atomically."""
        from safetensors.torch import save_model

        with staged_directory(directory) as tmp:
            meta = {"dim": self.dim, "classes": self.classes, "fusion": self.fusion, "hidden": self.hidden}
            atomic_write_json(tmp / _META, meta, indent=2)
            save_model(self, str(tmp / _WEIGHTS))
            settle_file(tmp / _WEIGHTS)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FusionClassifier:
        from safetensors.torch import load_model

        directory = Path(directory)
        if not (directory / _META).is_file():
            raise FileNotFoundError(
                f"{directory / _META} is missing: expected a folder written by `retrieval classify train`"
            )
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        model = cls(int(meta["dim"]), meta["classes"], meta["fusion"], int(meta["hidden"]))
        load_model(model, str(directory / _WEIGHTS), strict=True)
        return model.eval()


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def labelled_examples(model: Any, pairs: Any, column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(image vectors [N, D], caption vectors [N, D], labels [N])`` of the pairs that carry ``column``."""
    from retrieval import encoding

    keep = [i for i, p in enumerate(pairs) if (p.metadata or {}).get(column) not in (None, "")]
    if not keep:
        fields = sorted({k for p in pairs for k in (p.metadata or {})})
        raise ValueError(f"no pair has a label in column {column!r}; metadata fields present: {fields}")
    chosen = [pairs[i] for i in keep]
    images = sorted({p.image for p in chosen})
    image_vecs = _numpy(encoding.encode_images(model, images, progress=False).vectors)  # [I, D]
    row = {path: i for i, path in enumerate(images)}
    texts = _numpy(encoding.encode_texts(model, [p.caption for p in chosen], progress=False).vectors)
    u = image_vecs[[row[p.image] for p in chosen]]  # [N, D]
    return u, texts, [str(p.metadata[column]) for p in chosen]


def _present(inputs: str, n: int) -> torch.Tensor:
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {list(INPUTS)}; received {inputs!r}")
    return torch.tensor([[inputs != "text", inputs != "image"]] * n, dtype=torch.bool)  # [n, 2]


def train_classifier(model: Any, pairs: Any, config: ClassifyConfig) -> FusionClassifier:
    """Fit a :class:`FusionClassifier` predicting ``config.label_column`` from ``model``'s vectors."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    u, v, labels = labelled_examples(model, pairs, config.label_column)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    head = FusionClassifier(u.shape[1], classes, config.fusion, config.hidden)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    uu, vv = torch.from_numpy(u), torch.from_numpy(v)
    head.train()
    for _ in range(config.epochs):
        order = rng.permutation(len(y))
        draw = rng.random(len(y))  # modality dropout: image only, text only, or both
        present = torch.from_numpy(np.stack([draw > config.modality_dropout / 2,
                                             draw < 1 - config.modality_dropout / 2], 1))  # fmt: skip
        for s in range(0, len(order), config.batch_size):
            b = torch.from_numpy(order[s : s + config.batch_size])
            loss = F.cross_entropy(head(uu[b], vv[b], present[b]), y[b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


@torch.no_grad()
def predict(classifier: FusionClassifier, image: Any = None, text: Any = None) -> np.ndarray:
    """``[N, C]`` class probabilities from image vectors, text vectors, or both (``[N, D]`` each)."""
    if image is None and text is None:
        raise ValueError("give image vectors, text vectors, or both")
    ref = image if image is not None else text
    n = len(ref)
    u = torch.from_numpy(_numpy(image)) if image is not None else torch.zeros(n, classifier.dim)
    v = torch.from_numpy(_numpy(text)) if text is not None else torch.zeros(n, classifier.dim)
    present = torch.tensor([[image is not None, text is not None]] * n, dtype=torch.bool)
    return torch.softmax(classifier(u, v, present), -1).numpy()


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix, per input kind, with the
    zero-shot baseline on the same examples."""

    classes: list[str]
    accuracy: dict[str, float]  # "image" / "text" / "both" and "zeroshot/..." -> top-1 accuracy
    per_class: dict[str, dict[str, dict[str, float]]]  # input -> class -> precision/recall/f1/support
    confusion: dict[str, np.ndarray]  # input -> [C, C] counts, row = true class

    def summary(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "accuracy": self.accuracy,
            "per_class": self.per_class,
            "confusion": {k: v.tolist() for k, v in self.confusion.items()},
        }


def _per_class(
    y: np.ndarray, pred: np.ndarray, classes: list[str]
) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    c = len(classes)
    confusion = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    out = {}
    for i, name in enumerate(classes):
        tp, support, predicted = confusion[i, i], confusion[i].sum(), confusion[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if support and precision + recall > 0 else 0.0
        out[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    return out, confusion


def evaluate_classifier(
    model: Any, classifier: FusionClassifier, pairs: Any, column: str, templates: Sequence[str] | None = None
) -> ClassificationReport:
    """Classify the labelled pairs from image only, text only and both; zero-shot by prompts as the baseline.

    Labels unseen in training count as errors (they cannot be predicted).
    """
    from retrieval.evaluate import DEFAULT_TEMPLATES, class_embeddings

    u, v, labels = labelled_examples(model, pairs, column)
    classes = list(classifier.classes)
    extra = sorted(set(labels) - set(classes))
    all_classes = classes + extra
    y = np.array([all_classes.index(label) for label in labels])
    accuracy, per_class, confusion = {}, {}, {}
    prompts = _numpy(class_embeddings(model, classes, tuple(templates or DEFAULT_TEMPLATES)))  # [C, D]
    both = u + v
    fused = both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    for inputs in INPUTS:
        probs = predict(classifier, u if inputs != "text" else None, v if inputs != "image" else None)
        pred = probs.argmax(1)
        accuracy[inputs] = float((pred == y).mean())
        per_class[inputs], confusion[inputs] = _per_class(y, pred, all_classes)
        query = {"image": u, "text": v, "both": fused}[inputs]
        zero = (query @ prompts.T).argmax(1)
        accuracy[f"zeroshot/{inputs}"] = float((zero == y).mean())
        per_class[f"zeroshot/{inputs}"], confusion[f"zeroshot/{inputs}"] = _per_class(y, zero, all_classes)
    return ClassificationReport(all_classes, accuracy, per_class, confusion)


def write_classification_report(report: ClassificationReport, directory: str | os.PathLike[str]) -> Path:
    """``metrics.json``, ``report.md`` and ``confusion_{image,text,both}.png`` in ``directory``."""
    from matplotlib.figure import Figure

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for inputs in INPUTS:
        counts = report.confusion[inputs].astype(np.float64)
        rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        n = len(report.classes)
        fig = Figure(figsize=(min(3 + 0.35 * n, 16),) * 2)
        ax = fig.add_subplot()
        im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        if n <= 40:
            ax.set_xticks(range(n), report.classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), report.classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{inputs}: accuracy {report.accuracy[inputs]:.3f} (row-normalised)")
        fig.colorbar(im, ax=ax, fraction=0.046)
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        atomic_write_bytes(out / f"confusion_{inputs}.png", buf.getvalue())
    lines = ["# Classification", "", "| input | classifier | zero-shot by prompts |", "|---|---:|---:|"]
    lines += [f"| {i} | {report.accuracy[i]:.4f} | {report.accuracy['zeroshot/' + i]:.4f} |" for i in INPUTS]
    lines += ["", "## Per class (image and text)", "", "| class | precision | recall | F1 | support |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in report.per_class["both"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    lines += ["", *[f"![confusion_{i}](confusion_{i}.png)\n" for i in INPUTS]]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "metrics.json", json.dumps(report.summary(), indent=2, sort_keys=True) + "\n")
    return out
