"""One call from a collection location (a folder or a Milvus location) and a query to hits: what scripts
and ``retrieval search`` use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retrieval.search.queries import ImageQuery, one_text
from retrieval.search.searcher import Hit, Searcher

__all__ = ["search_collection"]


def search_collection(
    collection_path: str | Path,
    query: str | None = None,
    *,
    image: ImageQuery | None = None,
    model_dir: str | Path | None = None,
    k: int = 10,
    where: Mapping[str, Any] | None = None,
    text_weight: float = 0.5,
    modality: str | None = None,
    runtime: str = "auto",
) -> list[Hit]:
    """One-call search for scripts and the CLI: loads the model (``model_dir``: any name
    :func:`retrieval.model.load_model` takes; else the one recorded when the collection was embedded)
    and queries with text, an image, or both (composed).

    ``modality`` is what to return: "image" | "text"; by default images for text queries and for
    composed queries, images for image queries too. ``runtime`` is how the model's towers run
    ("auto" | "torch" | "onnx": :mod:`retrieval.encoding.towers`).
    """
    if query is None and image is None:
        raise ValueError("give a text query, an image, or both")
    from retrieval.embed import recorded_model
    from retrieval.model import load_model

    name = str(model_dir) if model_dir is not None else recorded_model(collection_path)
    if name is None:
        raise ValueError(
            f"no model recorded for collection {collection_path}: name the model (--model MODEL)"
        )
    model = load_model(name, runtime=runtime)
    target = modality or "image"
    with Searcher(model, collection_path) as searcher:
        if query is not None and image is not None:
            return searcher.composed(image, query, k, text_weight=text_weight, modality=target, where=where)
        if image is not None:
            vectors = searcher.encode_images([image])
        else:
            vectors = searcher.encode_texts([one_text(query)])
        return searcher.search_vectors(vectors, k, modality=target, where=where)[0]
