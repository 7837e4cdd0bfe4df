"""One call from a collection location (a folder or a Milvus location) and a query to hits: what scripts
and ``retrieval search`` use."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from retrieval.search.expansion import Expansion
from retrieval.search.hubness import Hubness, QueryBank
from retrieval.search.hybrid import Hybrid
from retrieval.search.queries import ImageQuery, one_text
from retrieval.search.searcher import Hit, Searcher

__all__ = ["search_collection", "search_texts"]


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
    hubness: str | Hubness | None = None,
    query_bank: str | os.PathLike[str] | QueryBank | None = None,
    rerank: int = 0,
    runtime: str = "auto",
    hybrid: Hybrid | None = None,
    expansion: bool | Expansion = False,
) -> list[Hit]:
    """One-call search for scripts and the CLI: loads the model (``model_dir``: any name
    :func:`retrieval.model.load_model` takes; else the one recorded when the collection was embedded)
    and queries with text, an image, or both (composed).

    ``modality`` is what to return: "image" | "text"; by default what the collection holds when it
    holds one modality only (a caption-only collection answers with captions), else images.

    ``hubness`` ("isoftmax" | "csls" or a :class:`~retrieval.search.Hubness`) corrects text and image
    queries with a query bank (``query_bank``: a bank or its ``.querybank.npz`` file; default the one
    stored beside the collection), and ``rerank=N`` re-orders the best N by the model's match head:
    the same scoring as ``retrieval serve --hubness/--rerank`` (:class:`~retrieval.search.Searcher`).
    ``expansion`` (``True`` for the default :class:`~retrieval.search.Expansion`) moves a text query for
    images, or an image query for captions, towards the partners of its nearest pairs in that bank.
    Composed queries are scored by cosine. ``hybrid`` (a :class:`~retrieval.search.Hybrid`) answers a
    text query by the dense arm and BM25 over the items' indexed text fields, fused; its lexical-only
    mode loads no model. ``runtime`` is how the model's towers run ("auto" | "torch" | "onnx":
    :mod:`retrieval.encoding.towers`).
    """
    if query is None and image is None:
        raise ValueError("give a text query, an image, or both")
    if hybrid is not None and image is not None:
        raise ValueError("hybrid search takes a text query alone: drop the image, or search without hybrid")
    model = _load_model(collection_path, model_dir, hybrid, runtime)
    with _searcher(model, collection_path, hubness, query_bank, rerank, hybrid, expansion) as searcher:
        target = modality or _default_modality(searcher)
        if hybrid is not None:
            return searcher.search_hybrid([one_text(query)], k=k, modality=target, where=where)[0]
        if query is not None and image is not None:
            return searcher.composed(image, query, k, text_weight=text_weight, modality=target, where=where)
        if image is not None:
            vectors, kind = searcher.encode_images([image]), "image"
        else:
            vectors, kind = searcher.encode_texts([one_text(query)]), "text"
        return searcher.search_vectors(vectors, k, modality=target, where=where, query_modality=kind)[0]


def search_texts(
    collection_path: str | Path,
    queries: Sequence[str],
    *,
    model_dir: str | Path | None = None,
    k: int = 10,
    where: Mapping[str, Any] | None = None,
    modality: str | None = None,
    hubness: str | Hubness | None = None,
    query_bank: str | os.PathLike[str] | QueryBank | None = None,
    rerank: int = 0,
    runtime: str = "auto",
    hybrid: Hybrid | None = None,
    expansion: bool | Expansion = False,
) -> list[list[Hit]]:
    """Several text queries at once (e.g. one per line of a file): the model loads once and the
    queries are encoded in batches; one list of hits per query, in order. Arguments as in
    :func:`search_collection`."""
    if isinstance(queries, str):
        raise TypeError("search_texts takes a list of queries; for one query use search_collection")
    texts = [one_text(query) for query in queries]
    model = _load_model(collection_path, model_dir, hybrid, runtime)
    with _searcher(model, collection_path, hubness, query_bank, rerank, hybrid, expansion) as searcher:
        target = modality or _default_modality(searcher)
        if hybrid is not None:
            return searcher.search_hybrid(texts, k=k, modality=target, where=where)
        return searcher.search_vectors(
            searcher.encode_texts(texts), k, modality=target, where=where, query_modality="text"
        )


def _default_modality(searcher: Searcher) -> str:
    """What a one-modality collection holds, else images."""
    return (searcher._only_modality() if searcher._has_modality else None) or "image"


def _searcher(
    model: Any,
    collection_path: str | Path,
    hubness: str | Hubness | None,
    query_bank: str | os.PathLike[str] | QueryBank | None,
    rerank: int,
    hybrid: Hybrid | None = None,
    expansion: bool | Expansion = False,
) -> Searcher:
    correction = Hubness(hubness) if isinstance(hubness, str) else hubness
    bank = QueryBank.load(query_bank) if isinstance(query_bank, (str, os.PathLike)) else query_bank
    expand = Expansion() if expansion is True else (expansion or None)
    return Searcher(
        model, collection_path, hubness=correction, query_bank=bank, rerank=rerank, hybrid=hybrid, expansion=expand
    )


def _load_model(
    collection_path: str | Path,
    model_dir: str | Path | None,
    hybrid: Hybrid | None = None,
    runtime: str = "auto",
) -> Any:
    """The model named, else the one recorded when the collection was embedded (None for words alone)."""
    from retrieval.embed import recorded_model
    from retrieval.model import load_model

    if hybrid is not None and hybrid.fusion == "lexical" and model_dir is None:
        return None
    name = str(model_dir) if model_dir is not None else recorded_model(collection_path)
    if name is None:
        raise ValueError(
            f"no model recorded for collection {collection_path}: name the model (--model MODEL)"
        )
    return load_model(name, runtime=runtime)
