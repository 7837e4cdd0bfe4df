"""Siamese cross-modal retrieval: twin encoders, losses, training, embedding, search, evaluation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
