"""The error of an export a model cannot take."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(ValueError):
    """A model that the chosen target cannot express, or an export that failed its check; the message
    says why and what to use instead."""
