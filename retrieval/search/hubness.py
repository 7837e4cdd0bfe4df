"""Hubness correction at query time: query-bank normalisation of similarity scores.

In a high-dimensional space a few items (hubs) are near many queries and come back for
most of them. Query-bank normalisation compares each candidate item with a bank of
typical queries (queries of the same modality, e.g. the training captions) and lowers
the score of items that are close to many of them. Both methods here reduce to a
per-item penalty subtracted from the cosine score, so they re-rank any candidate list:

* ``"isoftmax"`` -- the inverted softmax (Smith et al. 2017, "Offline bilingual word
  vectors, orthogonal transformations and the inverted softmax"), as used for
  cross-modal retrieval by QB-Norm (Bogolin et al. 2022, "Cross Modal Retrieval with
  Querybank Normalisation"): ``p(j | q) = exp(beta s(q, j)) / sum_b exp(beta s(b, j))``.
  Its log divided by ``beta`` ranks like ``s(q, j) - logsumexp_b(beta s(b, j)) / beta``.
* ``"csls"`` -- cross-domain similarity local scaling (Conneau et al. 2018, "Word
  translation without parallel data"): ``2 s(q, j) - r_q - r_j`` with ``r_j`` the mean
  similarity of item ``j`` to its ``k`` nearest bank queries; ``r_q`` is constant per
  query, so it ranks like ``s(q, j) - r_j / 2``.

:func:`item_penalties` computes the penalty of items from the bank; :func:`rerank` applies
it to candidate lists. :class:`QueryBank` holds the bank vectors of each query modality and
is stored beside a local collection (:func:`query_bank_path`).

Example::

    bank = QueryBank({"text": caption_vectors, "image": image_vectors}, fingerprint=model.fingerprint())
    bank.save(query_bank_path("photos.coll"))
    penalties = item_penalties(bank.vectors["text"], image_vectors, Hubness("isoftmax"))
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.io import atomic_write_bytes

__all__ = [
    "HUBNESS_METHODS",
    "Hubness",
    "QueryBank",
    "build_query_bank",
    "item_penalties",
    "query_bank_path",
    "rerank",
]

HUBNESS_METHODS = ("isoftmax", "csls")
BANK_SUFFIX = ".querybank.npz"


@dataclasses.dataclass(frozen=True)
class Hubness:
    """How to correct hubness at query time."""

    method: str = "isoftmax"  # "isoftmax" (inverted softmax, QB-Norm) | "csls"
    beta: float = 10.0  # isoftmax: inverse temperature over the bank (best of 10/20/50 on OpenMoji val)
    k: int = 10  # csls: bank neighbours averaged into an item's hub score
    candidates: int = 100  # Searcher: dense candidates re-ranked per query (at least k)

    def __post_init__(self) -> None:
        if self.method not in HUBNESS_METHODS:
            raise ValueError(
                f"unknown hubness method {self.method!r}; expected one of {list(HUBNESS_METHODS)}"
            )
        if not float(self.beta) > 0:
            raise ValueError(f"Hubness.beta must be > 0; received {self.beta!r}")
        if int(self.k) < 1 or int(self.candidates) < 1:
            raise ValueError(
                f"Hubness.k and Hubness.candidates must be >= 1; received {self.k!r}, {self.candidates!r}"
            )


def _rows(x: Any, what: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a [n, dim] array; received shape {array.shape}")
    return array


def item_penalties(bank: Any, items: Any, hubness: Hubness, *, chunk_size: int = 4096) -> np.ndarray:
    """``[N]`` float32 penalty of each item (row of ``items [N, D]``) given query bank ``bank [B, D]``.

    Subtracting it from the cosine score ``s(q, j)`` gives a score that ranks like the chosen
    normalisation (module docstring). The bank must hold queries of the modality that will
    query these items (captions to correct text->image search).
    """
    bank, items = _rows(bank, "the query bank"), _rows(items, "the items")
    if bank.shape[0] == 0:
        raise ValueError("the query bank is empty: build it from some queries of the searched modality")
    if bank.shape[1] != items.shape[1]:
        raise ValueError(
            f"query bank has dim {bank.shape[1]}, items have dim {items.shape[1]}: same model needed"
        )
    out = np.empty(items.shape[0], dtype=np.float32)
    k = min(int(hubness.k), bank.shape[0])
    for i0 in range(0, items.shape[0], chunk_size):
        s = bank @ items[i0 : i0 + chunk_size].T  # [B, c]
        if hubness.method == "isoftmax":
            z = hubness.beta * s.astype(np.float64)  # [B, c]
            top = z.max(0)  # [c]
            out[i0 : i0 + chunk_size] = (top + np.log(np.exp(z - top).sum(0))) / hubness.beta
        else:
            nearest = -np.partition(-s, k - 1, axis=0)[:k]  # [k, c] the k largest similarities
            out[i0 : i0 + chunk_size] = nearest.mean(0) / 2.0
    return out


def rerank(
    scores: np.ndarray, ids: np.ndarray, penalty: dict[int, float] | np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate lists by ``score - penalty``; keeps the best ``k`` of each row.

    ``scores, ids``: ``[n, c]`` as a collection search returns them (``-1`` ids pad rows).
    ``penalty``: ``{id: penalty}`` (missing ids: 0), or an ``[n, c]`` array aligned with ``ids``.
    Returns ``(corrected scores [n, k'], ids [n, k'])`` with ``k' = min(k, c)``, padded with
    ``-inf`` / ``-1``. Only the order changes: no candidate among the best ``k`` by the new score
    is dropped, and no id is added.
    """
    valid = ids >= 0  # [n, c]
    if isinstance(penalty, np.ndarray):
        if penalty.shape != ids.shape:
            raise ValueError(f"penalty array has shape {penalty.shape}, the ids {ids.shape}: align them")
        pen = penalty.astype(np.float64)  # [n, c]
    else:
        lookup = np.vectorize(lambda i: penalty.get(int(i), 0.0), otypes=[np.float64])
        pen = lookup(ids) if ids.size else np.zeros(ids.shape)  # [n, c]
    corrected = np.where(valid, scores.astype(np.float64) - pen, -np.inf)  # [n, c]
    order = np.argsort(-corrected, axis=1, kind="stable")[:, :k]  # [n, k']
    new_scores = np.take_along_axis(corrected, order, 1).astype(np.float32)
    new_ids = np.where(np.isfinite(new_scores), np.take_along_axis(ids, order, 1), -1)
    return new_scores, new_ids.astype(np.int64)


def query_bank_path(collection_path: str | os.PathLike[str]) -> Path:
    """Where the query bank of a local collection is stored: ``<collection>.querybank.npz`` beside it."""
    path = Path(collection_path)
    return path.with_name(path.name + BANK_SUFFIX)


@dataclasses.dataclass(frozen=True)
class QueryBank:
    """Typical query vectors per query modality (``"text"``, ``"image"``), each ``[B, D]`` unit rows.

    ``fingerprint`` names the model that encoded them (it must be the collection's). ``pairs``, when
    the bank's captions and images come from pairs, gives for each text row the row of its image
    (``[B_text]`` int64, like ``PairSet.text_to_image``); query expansion
    (:mod:`retrieval.search.expansion`) needs it, hubness correction does not.
    """

    vectors: dict[str, np.ndarray]
    fingerprint: str | None = None
    pairs: np.ndarray | None = None

    def __post_init__(self) -> None:
        for modality, rows in self.vectors.items():
            if modality not in ("text", "image"):
                raise ValueError(f"query bank modality must be 'text' or 'image'; received {modality!r}")
            _rows(rows, f"the {modality} query bank")
        if self.pairs is not None:
            pairs = np.asarray(self.pairs)
            n_text = len(self.vectors.get("text", ()))
            n_image = len(self.vectors.get("image", ()))
            if pairs.shape != (n_text,) or not np.issubdtype(pairs.dtype, np.integer):
                raise ValueError(
                    f"query bank pairs must be {n_text} ints (the image row of each text row); "
                    f"received an array of shape {pairs.shape} and dtype {pairs.dtype}"
                )
            if n_text and (pairs.min() < 0 or pairs.max() >= n_image):
                raise ValueError(
                    f"query bank pairs must name image rows 0..{n_image - 1}; received values "
                    f"{int(pairs.min())}..{int(pairs.max())}"
                )
            object.__setattr__(self, "pairs", pairs.astype(np.int64))

    def for_queries(self, modality: str) -> np.ndarray:
        """The bank of queries of ``modality``; a clear error when the bank has none."""
        if modality not in self.vectors or len(self.vectors[modality]) == 0:
            raise ValueError(
                f"the query bank holds no {modality} queries (it has {sorted(self.vectors)}): rebuild it "
                f"with {modality} queries to correct {modality} searches"
            )
        return self.vectors[modality]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bank to ``path`` (``.npz``) atomically."""
        buffer = io.BytesIO()
        meta = json.dumps({"fingerprint": self.fingerprint, "modalities": sorted(self.vectors)})
        arrays = {m: np.asarray(v, dtype=np.float32) for m, v in self.vectors.items()}
        if self.pairs is not None:
            arrays["pairs"] = self.pairs
        np.savez(buffer, meta=np.array(meta), **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QueryBank:
        """Read a bank written by :meth:`save`."""
        if not Path(path).exists():
            raise FileNotFoundError(
                f"no query bank at {path}: build one (retrieval.search.build_query_bank, or the demo) "
                "or search without hubness correction and query expansion"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            vectors = {m: np.asarray(data[m], dtype=np.float32) for m in meta["modalities"]}
            pairs = np.asarray(data["pairs"]) if "pairs" in data.files else None  # None: saved before pairs
        return cls(vectors, meta.get("fingerprint"), pairs)


def build_query_bank(
    model: Any, pairs: Any, *, max_queries: int = 5000, seed: int = 0, batch_size: int = 64
) -> QueryBank:
    """A bank of typical queries from a pair set (e.g. the training split), drawn with ``seed`` and
    encoded by ``model``: up to ``max_queries`` captions (text queries, drawn as pairs) and up to
    ``max_queries`` images (image queries: the drawn pairs' images, then others drawn from the rest),
    with which caption belongs to which image (``pairs``). Images that cannot be decoded are left out
    with their captions."""
    from retrieval import encoding

    rng = np.random.default_rng(seed)
    captions, images = list(pairs.captions()), list(pairs.images())
    if not captions or not images:
        raise ValueError("the pair set is empty: build the query bank from some images and captions")
    image_of = np.asarray(pairs.text_to_image(), dtype=np.int64)  # [n_pairs]
    drawn = np.sort(rng.choice(len(captions), size=min(max_queries, len(captions)), replace=False))
    chosen_images = np.unique(image_of[drawn])  # sorted image rows of the drawn pairs
    room = min(max_queries, len(images)) - len(chosen_images)  # several captions per image leave room
    if room > 0:
        others = np.setdiff1d(np.arange(len(images)), chosen_images)
        chosen_images = np.union1d(chosen_images, rng.choice(others, size=room, replace=False))
    encoded = encoding.encode_images(
        model,
        [images[int(i)] for i in chosen_images],
        batch_size=batch_size,
        skip_broken=True,
        progress=False,
    )
    row_of = {int(chosen_images[position]): row for row, position in enumerate(encoded.positions)}
    drawn = np.asarray([int(i) for i in drawn if int(image_of[i]) in row_of], dtype=np.int64)
    if len(drawn) == 0:
        raise ValueError(
            "no image of the drawn pairs could be decoded: build the query bank from readable images"
        )
    texts = encoding.encode_texts(
        model, [captions[int(i)] for i in drawn], batch_size=batch_size, progress=False
    )
    fingerprint = str(model.fingerprint()) if hasattr(model, "fingerprint") else None
    links = np.asarray([row_of[int(image_of[i])] for i in drawn], dtype=np.int64)
    return QueryBank({"text": _numpy(texts.vectors), "image": _numpy(encoded.vectors)}, fingerprint, links)


def _numpy(x: Any) -> np.ndarray:
    """float32 numpy rows from a tensor or an array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
