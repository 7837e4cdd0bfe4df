"""The ONNX target of ``export-model``: each tower with its projection head and the L2 normalisation,
as one graph per modality that outputs the model's unit vectors.

The graphs are written by the same exporter as the fast inference path
(:func:`retrieval.export.onnx.export_tower`: dynamic batch, dynamic length for text, checked by ONNX
Runtime against torch on other shapes than the traced ones, the preprocessing and tokenizer files in
``preprocess.json`` beside the graph). The inference path exports towers alone (their heads run on
torch, so every model sharing a locked tower shares one graph); an export for use elsewhere must
answer with the final vectors, so here the exported module is the tower followed by its head.

Layout of the export folder::

    image/tower.onnx  image/preprocess.json           pixel_values [B, 3, H, W] -> features [B, D]
    text/tower.onnx   text/preprocess.json  text/tokenizer/   input_ids, attention_mask [B, L] -> [B, D]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.export.check import check_embeddings
from retrieval.export.onnx import cpu_session, export_tower

__all__ = ["EmbeddingModule", "write_onnx"]


class EmbeddingModule(nn.Module):
    """A tower, its projection head and the L2 normalisation: ``inputs -> [B, D]`` unit vectors, with
    the tower's preprocessing methods (what :func:`~retrieval.export.onnx.export_tower` reads)."""

    def __init__(self, tower: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.projection = projection

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.tower(*inputs)).float(), dim=-1)  # [B, D]

    # the tower's preprocessing, which the exporter records beside the graph
    def image_transform(self, train: bool = False) -> Any:
        return self.tower.image_transform(train)  # type: ignore[operator]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tower.tokenize(texts)  # type: ignore[operator]

    def preprocess_config(self) -> dict[str, Any]:
        return self.tower.preprocess_config()  # type: ignore[operator]

    def save_assets(self, folder: Path) -> None:
        self.tower.save_assets(folder)  # type: ignore[operator]

    @property
    def backbone(self) -> Any:  # the transformer optimizer reads the text backbone's config
        return getattr(self.tower, "backbone", None)


def write_onnx(model: Any, folder: Path, tolerance: float) -> dict[str, float]:
    """Export ``model``'s image and text embedding graphs into ``folder/image`` and ``folder/text``,
    then load them back in ONNX Runtime and compare their unit vectors with the model's on the export
    check's sample inputs; returns ``{"image": d, "text": d}`` (largest absolute differences)."""
    model = model.to("cpu").eval()
    fingerprint = str(model.fingerprint())
    graphs = {}
    for side, tower, head in (
        ("image", model.image_tower, model.image_projection),
        ("text", model.text_tower, model.text_projection),
    ):
        graphs[side] = export_tower(EmbeddingModule(tower, head), side, folder / side, fingerprint)
    image_session = cpu_session(graphs["image"].path, threads=torch.get_num_threads())
    text_session = cpu_session(graphs["text"].path, threads=torch.get_num_threads())

    def images(pixels: torch.Tensor) -> np.ndarray:
        return image_session.run(["features"], {"pixel_values": pixels.numpy()})[0]

    def texts(tokens: dict[str, torch.Tensor]) -> np.ndarray:
        ids = tokens["input_ids"].long()
        mask = tokens.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.long()
        return text_session.run(["features"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

    return check_embeddings(model, images, texts, tolerance, "onnx")
