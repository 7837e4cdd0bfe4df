"""Measuring retrieval: metrics on score matrices and embeddings, evaluation of models, reports."""

from __future__ import annotations

from retrieval.evaluate.metrics import (
    Ranking,
    ranking_metrics,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rankings,
    retrieval_rankings_from_embeddings,
)

__all__ = [
    "Ranking",
    "ranking_metrics",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_rankings",
    "retrieval_rankings_from_embeddings",
]
