"""Checks and normalisation of what a search is asked with: text queries, image queries, raw vectors."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["ImageQuery", "as_query_vectors", "load_query_image", "one_text"]

ImageQuery = Any  # PIL.Image.Image | str | os.PathLike: an image or the path of one


def one_text(query: Any) -> str:
    if not isinstance(query, str):
        hint = " (use the *_batch method for several queries)" if isinstance(query, (list, tuple)) else ""
        raise TypeError(f"a text query must be a str; received {type(query).__name__}{hint}")
    return query


def load_query_image(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if not text.startswith("tar://") and not os.path.isfile(text):
            raise FileNotFoundError(
                f"image query {text!r} is not a file: give a PIL image or an image path (for text, use text_to_*)"
            )
        from retrieval.data import load_image

        return load_image(text)
    raise TypeError(f"an image query must be a PIL image or a path; received {type(image).__name__}")


def as_query_vectors(vectors: Any, dim: int) -> np.ndarray:
    """[n, D] float32, finite, L2-normalised; readable errors for bad shapes."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    array = np.asarray(vectors)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"query vectors must be numeric; received dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"query vectors must have shape [n, {dim}]; received shape {array.shape}")
    array = array.astype(np.float32, copy=True)
    if not np.isfinite(array).all():
        raise ValueError("query vectors contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # [n, 1]
    if (norms < 1e-12).any():
        raise ValueError("a query vector is all zeros: it has no direction to search along")
    return array / norms
