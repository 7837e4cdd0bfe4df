"""Measuring retrieval: metrics on score matrices and embeddings, model evaluation, index cost, reports.

``result = evaluate_model(model, pairs)`` measures; ``write_report(result, directory)`` is the
separate step that writes the report folder.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.evaluate.metrics` -- pure metric functions (R@K, true recall, MRR, mAP@K,
  nDCG@K, ranks; definitions and the tie policy in its docstring).
* :mod:`~retrieval.evaluate.zeroshot` -- zero-shot classification with prompt templates.
* :mod:`~retrieval.evaluate.index_eval` -- exact search vs a collection's ANN index.
* :mod:`~retrieval.evaluate.evaluator` -- :func:`evaluate_model` on a pair set.
* :mod:`~retrieval.evaluate.result` -- :class:`EvalResult`, what an evaluation measured.
* :mod:`~retrieval.evaluate.report` -- :func:`write_report`: the report folder (JSON, Markdown,
  plots, CSV) of a result.
"""

from __future__ import annotations

from retrieval.config import EvalConfig
from retrieval.evaluate.evaluator import evaluate_model
from retrieval.evaluate.index_eval import IndexComparison, compare_index
from retrieval.evaluate.metrics import (
    Ranking,
    ranking_metrics,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rankings,
    retrieval_rankings_from_embeddings,
)
from retrieval.evaluate.report import write_report
from retrieval.evaluate.result import EvalResult
from retrieval.evaluate.zeroshot import (
    DEFAULT_TEMPLATES,
    ZeroShotResult,
    class_embeddings,
    zero_shot_classify,
    zero_shot_from_labels,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "EvalConfig",
    "EvalResult",
    "IndexComparison",
    "Ranking",
    "ZeroShotResult",
    "class_embeddings",
    "compare_index",
    "evaluate_model",
    "ranking_metrics",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_rankings",
    "retrieval_rankings_from_embeddings",
    "write_report",
    "zero_shot_classify",
    "zero_shot_from_labels",
]
