"""What an approximate index costs in recall: the same queries, exact vs through ``Collection.search``.

The candidates are the collection's items: its image items for text-to-image, its
text items for image-to-text (told apart by the ``modality`` metadata field when
the collection has one; otherwise every item is an image). An item is matched to
an evaluated image by a metadata field (``image_id`` by default, as written by
``retrieval embed``); items that match nothing are distractors.

* exact: the queries are scored against every candidate's stored vector
  (``Collection.vectors``), ranked with :mod:`retrieval.evaluate.metrics`.
* index: ``Collection.search(queries, k=max(ks), where={"modality": ...})``, the
  path a :class:`retrieval.search.Searcher` takes (a collection may answer small
  filtered searches exactly; the comparison notes it); a relevant item's rank is its
  position in the returned list, with the same pessimistic tie policy
  (returned non-relevant items with an equal score count against it). Items not
  returned rank beyond ``max(ks)``, so only the ``@K`` metrics are reported.

When an image appears several times among the candidates, its first item is the
relevant one and the others are distractors, in both measurements.

A direction is measured when the collection holds candidates for it: text-to-image with image
items, image-to-text with text items (an image-only collection gives text-to-image only, a
caption-only one image-to-text only). Evaluated images (or captions) the collection lacks are added
to a scratch copy of it, which is measured instead (:mod:`retrieval.evaluate.scratch`; the
collection is never written); ``add_missing=False`` leaves them out instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retrieval.evaluate._ranking import Ranking
from retrieval.evaluate.metrics import _check_ks, embedding_rankings, ranking_metrics
from retrieval.evaluate.scratch import scratch_copy

__all__ = ["IndexComparison", "compare_index"]


@dataclasses.dataclass(frozen=True)
class IndexComparison:
    """Exact and index-based metrics over the same candidates.

    Attributes:
        index_spec: the collection's index description (``Collection.index_spec``).
        exact: metrics of exact search (all keys, e.g. ``t2i/R@10``, ``t2i/MRR``).
        index: ``@K`` metrics through ``Collection.search`` (e.g. ``t2i/R@10``).
        n_image_items: image candidates in the collection (0: no t2i comparison).
        n_text_items: text candidates in the collection (0: no i2t comparison).
        missing_images: evaluated images with no image item in the collection (added to a scratch
            copy, or with ``add_missing=False`` their texts left out of t2i).
        refine: the ``refine`` factor passed to ``Collection.search``.
        filter_mode: how one modality was selected ("where", "post", or "none" for an image-only collection).
        notes: remarks for the reader (e.g. searches the collection answered exactly).
    """

    index_spec: str
    exact: dict[str, float]
    index: dict[str, float]
    n_image_items: int
    n_text_items: int
    missing_images: int
    refine: int | None = None
    notes: tuple[str, ...] = ()
    filter_mode: str = "where"
    added_images: int = 0  # evaluated images added to the scratch copy measured
    added_texts: int = 0  # evaluated captions added to the scratch copy measured

    def rows(self) -> list[tuple[str, float, float]]:
        """``(metric, exact, via index)`` for every metric measured both ways."""
        return [(key, self.exact[key], value) for key, value in self.index.items() if key in self.exact]

    def markdown(self) -> str:
        """A Markdown table: metric, exact, via the index, difference."""
        via = f"via {self.index_spec}" + (f" (refine {self.refine})" if self.refine else "")
        via += " (unfiltered, post-filtered)" if self.filter_mode == "post" else ""
        lines = [f"| metric | exact | {via} | difference |", "|---|---:|---:|---:|"]
        for key, exact, approx in self.rows():
            lines.append(f"| {key} | {exact:.4f} | {approx:.4f} | {approx - exact:+.4f} |")
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines)


def _item_targets(metadata: list[dict[str, Any]], image_index: dict[str, int], key_field: str) -> np.ndarray:
    """``[n_items]`` evaluated-image index of each item, ``-1`` when it matches none."""
    out = np.full(len(metadata), -1, dtype=np.int64)
    for j, meta in enumerate(metadata):
        key = meta.get(key_field)
        if key is not None:
            out[j] = image_index.get(str(key), -1)
    return out


def _first_item_per_image(targets: np.ndarray, n_images: int) -> np.ndarray:
    """``[n_images]`` position of the first item of each image, ``-1`` when it has none."""
    first = np.full(n_images, -1, dtype=np.int64)
    matched = np.nonzero(targets >= 0)[0]
    # reversed assignment: the earliest position wins
    first[targets[matched[::-1]]] = matched[::-1]
    return first


def _ranking_from_hits(
    hit_ids: np.ndarray, hit_scores: np.ndarray, relevant_items: list[np.ndarray], n_candidates: int
) -> Ranking:
    """A :class:`Ranking` from search results ``[n, k]``; ``relevant_items[q]`` are query ``q``'s relevant ids.

    Relevant items missing from the results get ranks past ``n_candidates`` (never within any K).
    """
    qs, cs, rs = [], [], []
    for q, (ids, scores, rel) in enumerate(zip(hit_ids, hit_scores, relevant_items)):
        if len(rel) == 0:
            continue
        valid = ids >= 0
        order = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")
        ids, scores, valid = ids[order], scores[order], valid[order]
        is_rel = valid & np.isin(ids, rel)
        nonrel_scores = scores[valid & ~is_rel]
        found = ids[is_rel]
        # pessimistic: j-th relevant hit + non-relevant hits scoring at least as high
        ranks = np.arange(1, len(found) + 1) + (nonrel_scores[None, :] >= scores[is_rel][:, None]).sum(1)
        missing = np.setdiff1d(rel, found)
        qs.append(np.full(len(rel), q, dtype=np.int64))
        cs.append(np.concatenate([found, missing]).astype(np.int64))
        rs.append(np.concatenate([ranks, n_candidates + 1 + np.arange(len(missing))]).astype(np.int64))
    cat = (lambda parts: np.concatenate(parts)) if qs else (lambda parts: np.zeros(0, dtype=np.int64))
    return Ranking(len(hit_ids), n_candidates, cat(qs), cat(cs), cat(rs))


FILTER_MODES = ("where", "post")


def _search(
    collection: Any,
    queries: np.ndarray,
    k: int,
    where: dict[str, Any] | None,
    refine: int | None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, scores) [n, k]``: a filtered search, or with ``allowed`` an unfiltered one post-filtered."""
    kwargs: dict[str, Any] = {"refine": refine} if refine else {}
    if allowed is None:
        scores, ids = collection.search(queries, k, where=where, **kwargs)
        return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    oversample = int(np.ceil(2 * len(collection) / max(len(allowed), 1)))
    scores, ids = collection.search(queries, min(len(collection), k * oversample), **kwargs)  # [n, kk]
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    keep = np.isin(ids, allowed)  # [n, kk]
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits first, in result order
    ids, scores = np.take_along_axis(ids, first, 1), np.take_along_axis(scores, first, 1)
    kept = np.take_along_axis(keep, first, 1)
    return np.where(kept, ids, -1), np.where(kept, scores, -np.inf).astype(np.float32)


def _at_k(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if "@" in key}


def compare_index(
    collection: Any,
    text_emb: Any,
    image_emb: Any,
    image_keys: Sequence[str],
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    key_field: str = "image_id",
    refine: int | None = None,
    filter_mode: str = "where",
    chunk_size: int = 4096,
    add_missing: bool = True,
) -> IndexComparison:
    """Retrieval metrics of exact search and of the collection's index, side by side.

    Args:
        collection: an open ``indexes.Collection`` holding vectors of the evaluated
            images (and, for image-to-text, texts), made by the same model.
        text_emb: ``[T, D]`` query embeddings of the evaluated texts.
        image_emb: ``[I, D]`` query embeddings of the evaluated images.
        image_keys: ``I`` keys of the evaluated images (``PairSet.image_ids()``),
            matched against each item's ``key_field`` metadata.
        text_to_image: ``[T]`` image index of each text.
        ks: cutoffs; the index is searched with ``k = max(ks)``.
        key_field: metadata field of the collection's items naming their image.
        refine: passed to ``Collection.search`` (exact re-scoring of ``refine * k`` candidates).
        filter_mode: how a mixed image/text collection is searched for one modality:
            ``"where"`` -- ``search(where={"modality": ...})``, as a Searcher does (the
            collection may answer small filtered searches exactly); ``"post"`` -- an
            unfiltered ANN search for ``k * ceil(2 * all items / that modality's items)``
            hits, keeping that modality's first ``k`` (measures the index itself).
        chunk_size: block size of the exact scoring.
        add_missing: evaluated images (and, when the collection holds texts, the captions of
            evaluated images without any text item) that are not in the collection are added to a
            scratch copy of it, which is measured instead; ``False`` leaves them out.
    """
    ks = _check_ks(ks)
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"filter_mode must be one of {list(FILTER_MODES)}, received {filter_mode!r}")
    te = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))  # [T, D]
    ie = torch.as_tensor(np.asarray(image_emb, dtype=np.float32))  # [I, D]
    g = np.asarray(text_to_image, dtype=np.int64)  # [T]
    if te.ndim != 2 or ie.ndim != 2 or te.shape[1] != ie.shape[1]:
        raise ValueError(
            f"text_emb {tuple(te.shape)} and image_emb {tuple(ie.shape)} must be [n, D] with one D"
        )
    if te.shape[1] != collection.dim:
        raise ValueError(
            f"embeddings have dim {te.shape[1]} but collection {collection.path} has dim {collection.dim}: "
            "evaluate with the model that built the collection"
        )
    if len(image_keys) != ie.shape[0] or g.shape != (te.shape[0],):
        raise ValueError(
            f"expected {ie.shape[0]} image keys and {te.shape[0]} text_to_image entries, "
            f"received {len(image_keys)} and {g.shape[0] if g.ndim else g.shape}"
        )
    args = (te, ie, [str(k) for k in image_keys], g, ks, key_field, refine, filter_mode, chunk_size)
    items = _Items.of(collection, key_field, image_keys)
    if len(items.image_ids) == 0 and len(items.text_ids) == 0:
        raise ValueError(
            f"collection {collection.path} holds no image or text item: embed the evaluation set into it"
        )
    lacking_images = np.flatnonzero(items.image_first < 0) if len(items.image_ids) else np.zeros(0, np.int64)
    lacking_texts = np.flatnonzero(np.isin(g, np.flatnonzero(~items.has_text))) if len(items.text_ids) else []
    if not add_missing or (len(lacking_images) == 0 and len(lacking_texts) == 0):
        return _compare(collection, items, *args)
    keys = [str(k) for k in image_keys]
    vectors = np.concatenate([ie.numpy()[lacking_images], te.numpy()[lacking_texts]])  # [n, D]
    image_meta = {"modality": "image"} if items.has_modality else {}
    metadata = [{**image_meta, key_field: keys[i]} for i in lacking_images]
    metadata += [{"modality": "text", key_field: keys[g[t]]} for t in lacking_texts]
    with scratch_copy(collection, vectors, metadata, key_field) as scratch:
        result = _compare(scratch, _Items.of(scratch, key_field, image_keys), *args)
    added = ", ".join(
        f"{n} evaluated {what}"
        for n, what in ((len(lacking_images), "images"), (len(lacking_texts), "captions"))
        if n
    )
    note = (
        f"{added} were not in the collection: they were embedded and added to a scratch copy of it "
        f"(index {result.index_spec}), which was measured instead; the collection was not changed."
    )
    return dataclasses.replace(
        result,
        index_spec=str(getattr(collection, "index_spec", "index")),
        missing_images=len(lacking_images),
        added_images=len(lacking_images),
        added_texts=len(lacking_texts),
        n_image_items=result.n_image_items - len(lacking_images),
        n_text_items=result.n_text_items - len(lacking_texts),
        notes=(note, *result.notes),
    )


@dataclasses.dataclass
class _Items:
    """The collection's items by modality, matched to the evaluated images."""

    image_ids: np.ndarray  # [Ni] ids of image items
    text_ids: np.ndarray  # [Nt] ids of text items
    image_targets: np.ndarray  # [Ni] evaluated image of each image item, -1 for none
    text_targets: np.ndarray  # [Nt] evaluated image of each text item, -1 for none
    image_first: np.ndarray  # [I] position of each evaluated image's first image item, -1 for none
    has_text: np.ndarray  # [I] bool: the evaluated image has a text item
    has_modality: bool  # the collection records a modality field

    @classmethod
    def of(cls, collection: Any, key_field: str, image_keys: Sequence[str]) -> _Items:
        n_images = len(image_keys)
        image_index = {str(key): i for i, key in enumerate(image_keys)}
        ids = np.asarray(collection.ids(), dtype=np.int64)
        metadata = collection.get(ids)
        has_modality = "modality" in collection.fields()
        modality = np.array([m.get("modality", "image") if has_modality else "image" for m in metadata])
        is_image, is_text = modality == "image", modality == "text"
        image_targets = _item_targets([m for m, i in zip(metadata, is_image) if i], image_index, key_field)
        text_targets = _item_targets([m for m, t in zip(metadata, is_text) if t], image_index, key_field)
        has_text = np.zeros(n_images, dtype=bool)
        has_text[text_targets[text_targets >= 0]] = True
        return cls(
            ids[is_image], ids[is_text], image_targets, text_targets,
            _first_item_per_image(image_targets, n_images), has_text, has_modality,
        )  # fmt: skip


def _compare(
    collection: Any,
    items: _Items,
    te: torch.Tensor,
    ie: torch.Tensor,
    image_keys: list[str],
    g: np.ndarray,
    ks: Sequence[int],
    key_field: str,
    refine: int | None,
    filter_mode: str,
    chunk_size: int,
) -> IndexComparison:
    """Both directions (those the collection has candidates for), exact and through the index."""
    k_max = max(ks)
    n_images = ie.shape[0]
    image_ids, text_ids, has_modality = items.image_ids, items.text_ids, items.has_modality
    first_item = items.image_first
    missing_images = int((first_item < 0).sum()) if len(image_ids) else 0
    if len(image_ids) and missing_images == n_images and not (items.text_targets >= 0).any():
        raise ValueError(
            f"none of the {n_images} evaluated images is in collection {collection.path} "
            f"(matched on metadata field {key_field!r}): embed this evaluation set into it"
        )
    exact: dict[str, float] = {}
    index: dict[str, float] = {}
    where_image = {"modality": "image"} if has_modality else None
    post = has_modality and filter_mode == "post"
    # text -> image
    if len(image_ids) and missing_images < n_images:
        g_items = first_item[g]  # [T] candidate position of each text's image, -1 when missing
        cand = torch.as_tensor(np.asarray(collection.vectors(image_ids), dtype=np.float32))  # [Ni, D]
        t2i_exact, _ = embedding_rankings(te, cand, torch.as_tensor(g_items), chunk_size, i2t=False)
        assert t2i_exact is not None
        exact.update(ranking_metrics(t2i_exact, ks, "t2i/"))
        hit_ids, hit_scores = _search(
            collection, te.numpy(), k_max, where_image, refine, image_ids if post else None
        )
        relevant = [image_ids[[j]] if j >= 0 else image_ids[:0] for j in g_items]
        ranking = _ranking_from_hits(hit_ids, hit_scores, relevant, len(image_ids))
        index.update(_at_k(ranking_metrics(ranking, ks, "t2i/")))
    # image -> text
    text_targets = items.text_targets
    if len(text_ids) and (text_targets >= 0).any():
        tcand = torch.as_tensor(np.asarray(collection.vectors(text_ids), dtype=np.float32))  # [Nt, D]
        _, i2t_exact = embedding_rankings(tcand, ie, torch.as_tensor(text_targets), chunk_size, t2i=False)
        assert i2t_exact is not None
        exact.update(ranking_metrics(i2t_exact, ks, "i2t/", true_recall=True))
        hit_ids, hit_scores = _search(
            collection, ie.numpy(), k_max, {"modality": "text"}, refine, text_ids if post else None
        )
        order = np.argsort(text_targets, kind="stable")
        bounds = np.searchsorted(text_targets[order], np.arange(n_images + 1))
        relevant = [text_ids[order[bounds[i] : bounds[i + 1]]] for i in range(n_images)]
        ranking = _ranking_from_hits(hit_ids, hit_scores, relevant, len(text_ids))
        index.update(_at_k(ranking_metrics(ranking, ks, "i2t/", true_recall=True)))
    if not exact:
        raise ValueError(
            f"none of the {n_images} evaluated images is in collection {collection.path}, nor any caption of "
            f"them (matched on metadata field {key_field!r}): embed this evaluation set into it"
        )
    notes = []
    exact_max = getattr(collection, "exact_filter_max", None)
    if has_modality and not post and isinstance(exact_max, int):
        small = [
            name for name, n in (("images", len(image_ids)), ("texts", len(text_ids))) if 0 < n <= exact_max
        ]
        if small:
            notes.append(
                f"The collection answers searches filtered to at most {exact_max} items exactly "
                f"({' and '.join(small)} here), as a Searcher would: the index is not used for them "
                "(filter_mode 'post' measures the index itself)."
            )
    return IndexComparison(
        notes=tuple(notes),
        index_spec=str(getattr(collection, "index_spec", "index")),
        exact=exact,
        index=index,
        n_image_items=len(image_ids),
        n_text_items=len(text_ids),
        missing_images=missing_images,
        refine=refine,
        filter_mode=filter_mode if has_modality else "none",
    )
