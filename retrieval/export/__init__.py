"""Models that travel: export a toolkit model to transformers, open_clip or ONNX, with a model card.

``export_model(model, "transformers", "out/")`` writes a ``CLIPModel`` / ``SiglipModel`` folder
(processor and tokenizer included) that plain transformers loads; ``"open_clip"`` writes the
``open_clip_config.json`` + weights folder open_clip loads; ``"onnx"`` the ONNX graphs of both towers
and heads (:mod:`retrieval.export.onnx` exports the towers, the same graphs the fast inference path
runs). Each export is checked, by loading it back, to embed as the toolkit model does; a model a
target cannot express is refused with :class:`ExportError`, naming the target that can.
"""

from __future__ import annotations

from retrieval.export.card import model_card, read_report
from retrieval.export.errors import ExportError
from retrieval.export.onnx import TowerGraph, export_tower, read_graph
from retrieval.export.targets import (
    EXPORT_INFO,
    EXPORT_TARGETS,
    TOLERANCES,
    ExportOptions,
    ExportResult,
    export_model,
)
from retrieval.export.to_open_clip import as_open_clip
from retrieval.export.to_transformers import as_transformers

__all__ = [
    "EXPORT_INFO",
    "EXPORT_TARGETS",
    "TOLERANCES",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "TowerGraph",
    "as_open_clip",
    "as_transformers",
    "export_model",
    "export_tower",
    "model_card",
    "read_graph",
    "read_report",
]
