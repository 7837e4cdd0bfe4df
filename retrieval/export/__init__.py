"""Models leaving the toolkit: towers as ONNX graphs (:mod:`retrieval.export.onnx`)."""

from __future__ import annotations

from retrieval.export.onnx import ExportError, TowerGraph, export_tower, read_graph

__all__ = ["ExportError", "TowerGraph", "export_tower", "read_graph"]
