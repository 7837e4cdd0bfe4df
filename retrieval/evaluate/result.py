"""What an evaluation measured: :class:`EvalResult`, the value report writing and printing start from."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from retrieval.evaluate._ranking import Ranking
from retrieval.evaluate.hybrid_eval import HybridComparison
from retrieval.evaluate.index_eval import IndexComparison
from retrieval.evaluate.zeroshot import ZeroShotResult

__all__ = ["EvalResult"]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Everything an evaluation measured.

    Attributes:
        metrics: flat metrics: retrieval (``t2i/R@1``, ``i2t/MRR``, ...), plus
            ``index/t2i/R@10``-style keys with a collection and ``zeroshot/top1``-style
            keys with labels.
        ks: the cutoffs.
        t2i, i2t: per-query :class:`Ranking` objects (with each query's top hits).
        images: evaluated image references (broken images removed).
        image_keys: their image ids.
        captions: evaluated captions.
        text_to_image: ``[len(captions)]`` index into ``images``.
        index: exact vs index comparison, when a collection was given.
        zero_shot: zero-shot classification, when a label column was given.
        zero_shot_images: indices into ``images`` of the classified images.
        skipped: ``(where, reason)`` for every image or caption left out.
        fingerprint: the model's fingerprint, when it has one.
        model_info: where the model came from (hub id and revision, or folder and weights hash),
            when it was loaded by name (``retrieval.model.load_model``).
        seconds: wall time of each stage.
        calibration: with re-ranking, the match head's reliability table on the re-ranked pairs.
        hybrid: dense, lexical and hybrid text-to-image through the collection, when asked.
        image_vectors: ``[len(images), D]`` float32 vectors of the evaluated images.
        leakage: test images with near-duplicates in the training data, when checked
            (:func:`retrieval.corpus.leakage.with_leakage`; it has ``summary()`` and ``markdown()``).
    """

    metrics: dict[str, float]
    ks: tuple[int, ...]
    t2i: Ranking
    i2t: Ranking
    images: list[str]
    image_keys: list[str]
    captions: list[str]
    text_to_image: np.ndarray
    index: IndexComparison | None = None
    zero_shot: ZeroShotResult | None = None
    zero_shot_images: np.ndarray | None = None
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fingerprint: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    model_info: dict[str, Any] | None = None
    calibration: list[dict[str, float]] | None = None
    hybrid: HybridComparison | None = None
    image_vectors: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    leakage: Any = dataclasses.field(default=None, compare=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``metrics.json`` holds)."""
        out: dict[str, Any] = {
            "metrics": {key: _json_float(value) for key, value in self.metrics.items()},
            "ks": list(self.ks),
            "n_images": len(self.images),
            "n_texts": len(self.captions),
            "n_skipped": len(self.skipped),
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
            "model_fingerprint": self.fingerprint,
            "seconds": self.seconds,
        }
        if self.model_info is not None:
            out["model_info"] = self.model_info
        if self.hybrid is not None:
            out["hybrid"] = self.hybrid.as_dict()
        if self.index is not None:
            out["index"] = {
                "index_spec": self.index.index_spec,
                "refine": self.index.refine,
                "filter_mode": self.index.filter_mode,
                "notes": list(self.index.notes),
                "exact": self.index.exact,
                "via_index": self.index.index,
                "n_image_items": self.index.n_image_items,
                "n_text_items": self.index.n_text_items,
                "missing_images": self.index.missing_images,
                "added_images": self.index.added_images,
                "added_texts": self.index.added_texts,
            }
        if self.leakage is not None:
            out["leakage"] = self.leakage.summary()
        if self.calibration is not None:
            out["calibration"] = [{k: _json_float(v) for k, v in row.items()} for row in self.calibration]
        if self.zero_shot is not None:
            out["zero_shot"] = {
                "classes": self.zero_shot.classes,
                "accuracy": self.zero_shot.accuracy,
                "per_class_accuracy": {
                    k: _json_float(v) for k, v in self.zero_shot.per_class_accuracy.items()
                },
                "confusion": self.zero_shot.confusion.tolist(),
            }
        return out


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
