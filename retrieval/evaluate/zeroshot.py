"""Zero-shot classification: class names become text prompts, images pick the closest class.

Following CLIP (Radford et al., 2021, section 3.1.4), each class name is put into
several prompt templates ("a photo of a {}."); the class embedding is the mean of
the template embeddings, re-normalised (prompt ensembling). An image is assigned
the classes with the highest inner product.

Accuracy uses the same pessimistic tie policy as the retrieval metrics: the true
class's rank is ``1 + (number of other classes with a score >= its score)``, and
top-K accuracy is the fraction of images whose true class ranks ``<= K``. The
confusion matrix uses the arg-max prediction (the lowest class index on ties).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retrieval import encoding

__all__ = [
    "DEFAULT_TEMPLATES",
    "ZeroShotResult",
    "class_embeddings",
    "zero_shot_classify",
    "zero_shot_from_labels",
]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "{}",
)


@dataclasses.dataclass(frozen=True)
class ZeroShotResult:
    """Outcome of a zero-shot classification.

    Attributes:
        classes: class names, in the order of the confusion matrix rows/columns.
        accuracy: ``{"top1": ..., "top5": ...}`` (one entry per requested K).
        per_class_accuracy: top-1 accuracy of each class present (``nan`` for absent classes).
        confusion: ``[C, C]`` int64 counts; row = true class, column = predicted class.
        predictions: ``[N]`` int64 arg-max class of each image.
        true_rank: ``[N]`` int64 1-based pessimistic rank of the true class.
    """

    classes: list[str]
    accuracy: dict[str, float]
    per_class_accuracy: dict[str, float]
    confusion: np.ndarray
    predictions: np.ndarray
    true_rank: np.ndarray

    def metrics(self, prefix: str = "zeroshot/") -> dict[str, float]:
        """Flat metrics (``zeroshot/top1``, ``zeroshot/top5``, ``zeroshot/mean_per_class``)."""
        per_class = [v for v in self.per_class_accuracy.values() if not np.isnan(v)]
        out = {f"{prefix}{name}": value for name, value in self.accuracy.items()}
        out[f"{prefix}mean_per_class"] = float(np.mean(per_class)) if per_class else float("nan")
        out[f"{prefix}n_images"] = float(len(self.predictions))
        out[f"{prefix}n_classes"] = float(len(self.classes))
        return out


def class_embeddings(
    model: Any, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256
) -> torch.Tensor:
    """``[C, D]`` unit class embeddings: the mean over templates of the prompts' embeddings
    (:func:`retrieval.encoding.encode_texts`), re-normalised."""
    if not classes:
        raise ValueError("no class names given: zero-shot classification needs at least one class")
    if not templates:
        raise ValueError("no prompt templates given: pass e.g. ('a photo of a {}.',)")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates must contain '{{}}' where the class name goes; received {bad}")
    prompts = [t.format(name) for name in classes for t in templates]  # class-major
    emb = encoding.encode_texts(model, prompts, batch_size=batch_size).vectors  # [C * P, D]
    emb = emb.reshape(len(classes), len(templates), -1).mean(1)  # [C, D]
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot_classify(
    image_emb: Any, class_emb: Any, labels: Any, classes: Sequence[str], ks: Sequence[int] = (1, 5)
) -> ZeroShotResult:
    """Classify images by their nearest class embedding; a pure function of embeddings.

    Args:
        image_emb: ``[N, D]`` image embeddings.
        class_emb: ``[C, D]`` class embeddings (e.g. from :func:`class_embeddings`).
        labels: ``[N]`` true class index of each image, in ``[0, C)``.
        classes: ``C`` class names.
        ks: top-K accuracies to report (``K > C`` counts every image as correct).

    Example::

        >>> import numpy as np
        >>> images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> r = zero_shot_classify(images, np.eye(2), [0, 1, 0], ["cat", "dog"], ks=(1,))
        >>> r.accuracy, r.confusion.tolist()
        ({'top1': 0.6666666666666666}, [[1, 1], [0, 1]])
    """
    img = torch.as_tensor(np.asarray(image_emb), dtype=torch.float32)
    cls = torch.as_tensor(np.asarray(class_emb), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    n_classes = len(classes)
    if img.ndim != 2 or cls.ndim != 2 or img.shape[1] != cls.shape[1]:
        raise ValueError(
            f"image_emb {tuple(img.shape)} and class_emb {tuple(cls.shape)} must be [N, D] and [C, D] with the same D"
        )
    if cls.shape[0] != n_classes:
        raise ValueError(f"class_emb has {cls.shape[0]} rows but {n_classes} class names were given")
    if img.shape[0] == 0:
        raise ValueError("no images to classify")
    if y.shape != (img.shape[0],):
        raise ValueError(
            f"labels has shape {tuple(y.shape)}, expected ({img.shape[0]},): one class per image"
        )
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(
            f"labels must be class indices in [0, {n_classes}), received {int(y.min())}..{int(y.max())}"
        )
    ranks, preds = [], []
    for i0 in range(0, img.shape[0], 4096):
        s = img[i0 : i0 + 4096] @ cls.T  # [b, C]
        true_s = s.gather(1, y[i0 : i0 + 4096, None])  # [b, 1]
        ranks.append((s >= true_s).sum(1))  # includes the true class itself: pessimistic 1-based rank
        preds.append(s.argmax(1))
    rank = torch.cat(ranks).numpy().astype(np.int64)
    pred = torch.cat(preds).numpy().astype(np.int64)
    yn = y.numpy()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (yn, pred), 1)
    support = np.bincount(yn, minlength=n_classes)
    correct = np.bincount(yn, weights=rank <= 1, minlength=n_classes)
    per_class = {
        name: float(correct[c] / support[c]) if support[c] else float("nan") for c, name in enumerate(classes)
    }
    accuracy = {f"top{k}": float(np.mean(rank <= k)) for k in sorted(set(ks))}
    return ZeroShotResult(list(classes), accuracy, per_class, confusion, pred, rank)


def zero_shot_from_labels(
    model: Any,
    image_emb: Any,
    labels: Sequence[Any],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    ks: Sequence[int] = (1, 5),
    batch_size: int = 256,
) -> ZeroShotResult:
    """Zero-shot classification of images whose labels are class names (or anything ``str()``-able).

    Classes are the sorted distinct labels; images whose label is ``None`` or empty
    must be filtered out by the caller.
    """
    names = [str(label) for label in labels]
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    class_emb = class_embeddings(model, classes, templates, batch_size=batch_size)  # [C, D]
    return zero_shot_classify(image_emb, class_emb, [index[n] for n in names], classes, ks)
