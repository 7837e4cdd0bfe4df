"""Dense, lexical and hybrid text-to-image retrieval through a collection, side by side.

Each evaluated caption queries the collection's image items three ways: the dense arm
(``Collection.search`` of its embedding), the lexical arm (``Collection.search_text``: BM25 over the
image items' text fields) and their fusion (:mod:`retrieval.search.hybrid`). The relevant item of a
caption is the image item of its image (matched by ``key_field``, as in
:mod:`retrieval.evaluate.index_eval`); captions whose image is not in the collection are left out
(counted). A rank beyond what an arm returned counts as not found, so only ``@K`` metrics are
reported: ``dense/t2i/R@K``, ``lexical/t2i/R@K`` and ``hybrid/t2i/R@K`` over the same queries.

Tuning (``tune=True``) splits the captions by image, with a seed, into a validation share and the
rest: every RRF ``k`` of :data:`RRF_KS` and every ``alpha`` of :data:`ALPHAS` is measured on the
validation captions, the best by validation ``R@K`` (K = 10 when measured, else the largest)
is kept, and all three rows are then reported on the other captions only, so the numbers are not
those the choice was made on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.evaluate.index_eval import _at_k, _Items, _ranking_from_hits
from retrieval.evaluate.metrics import _check_ks, ranking_metrics
from retrieval.search.hybrid import Hybrid, fuse_rrf, fuse_weighted

__all__ = ["ALPHAS", "RRF_KS", "HybridComparison", "compare_hybrid"]

RRF_KS = (0, 1, 2, 5, 10, 20, 40, 60, 100, 200)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))


@dataclasses.dataclass(frozen=True)
class HybridComparison:
    """What :func:`compare_hybrid` measured."""

    hybrid: Hybrid  # the settings of the hybrid row (the tuned ones when tuned)
    metrics: dict[str, float]  # dense/..., lexical/..., hybrid/... @K keys
    n_queries: int  # captions measured (the test share when tuned)
    left_out: int  # captions whose image has no image item in the collection
    tuned: dict[str, Any] | None = None  # validation queries, objective, and every setting's score
    notes: tuple[str, ...] = ()

    def markdown(self, ks: Sequence[int]) -> str:
        m = self.metrics
        lines = [
            "| K | dense (the collection) | lexical (BM25) | hybrid |",
            "|---:|---:|---:|---:|",
        ]
        for k in ks:
            lines.append(
                f"| {k} | {m[f'dense/t2i/R@{k}']:.4f} | {m[f'lexical/t2i/R@{k}']:.4f} | {m[f'hybrid/t2i/R@{k}']:.4f} |"
            )
        return "\n".join([*lines, "", *self.notes])

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.hybrid.as_dict(),
            "n_queries": self.n_queries,
            "left_out": self.left_out,
            "tuned": self.tuned,
            "notes": list(self.notes),
        }


def _fuse(
    hybrid: Hybrid, dense: tuple[np.ndarray, np.ndarray], lexical: tuple[np.ndarray, np.ndarray], k: int
):
    if hybrid.fusion == "lexical":
        return lexical[0][:, :k], lexical[1][:, :k]
    if hybrid.fusion == "rrf":
        return fuse_rrf([dense[1], lexical[1]], k, hybrid.k)
    return fuse_weighted(dense, lexical, k, hybrid.alpha)


def _recalls(
    scores: np.ndarray, ids: np.ndarray, relevant: np.ndarray, n_items: int, ks: Sequence[int], prefix: str
):
    rel = [np.array([r], dtype=np.int64) for r in relevant.tolist()]
    return _at_k(ranking_metrics(_ranking_from_hits(ids, scores, rel, n_items), ks, prefix))


def compare_hybrid(
    collection: Any,
    text_emb: Any,
    captions: Sequence[str],
    image_keys: Sequence[str],
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    hybrid: Hybrid | None = None,
    key_field: str = "image_id",
    refine: int | None = None,
    tune: bool = False,
    validation_share: float = 0.5,
    seed: int = 0,
) -> HybridComparison:
    """Dense, lexical and hybrid text-to-image ``@K`` metrics of ``captions`` against the collection's
    image items (see the module docstring). ``text_emb`` [T, D] are the captions' embeddings."""
    ks = _check_ks(ks)
    hybrid = hybrid or Hybrid()
    if not hasattr(collection, "search_text") or not getattr(collection, "text_fields", None):
        raise ValueError(
            f"collection {collection.path} has no text index: declare the fields to match "
            "(`retrieval text-index COLL FIELD[,FIELD]`) before evaluating hybrid search"
        )
    te = np.asarray(text_emb.detach().cpu() if hasattr(text_emb, "detach") else text_emb, dtype=np.float32)
    g = np.asarray(text_to_image, dtype=np.int64)
    if te.shape[0] != len(captions) or g.shape != (len(captions),):
        raise ValueError(
            f"{te.shape[0]} embeddings and {g.shape[0]} image indices for {len(captions)} captions"
        )
    items = _Items.of(collection, key_field, [str(k) for k in image_keys])
    if len(items.image_ids) == 0:
        raise ValueError(f"collection {collection.path} holds no image item to search for the captions")
    target = items.image_first[g]  # [T] position among the image items, -1 when missing
    kept = np.flatnonzero(target >= 0)
    if kept.size == 0:
        raise ValueError(
            f"none of the evaluated images is in collection {collection.path} (matched on {key_field!r})"
        )
    relevant = items.image_ids[target[kept]]  # [Q] collection id of each query's image item
    where = {"modality": "image"} if items.has_modality else None
    wide = max(max(ks), hybrid.candidates)
    kwargs: dict[str, Any] = {"refine": refine} if refine else {}
    d_scores, d_ids = collection.search(te[kept], wide, where=where, **kwargs)  # [Q, c]
    texts = [captions[int(t)] for t in kept]
    l_scores, l_ids = collection.search_text(texts, wide, where=where, fields=hybrid.fields)  # [Q, c]
    n_items = len(items.image_ids)
    measured = np.arange(kept.size)
    tuned = None
    notes = []
    if tune:
        rng = np.random.default_rng(seed)
        images = np.unique(g[kept])
        n_val = min(max(1, round(validation_share * images.size)), images.size - 1)
        chosen = rng.permutation(images)[:n_val]
        is_val = np.isin(g[kept], chosen)
        val, measured = np.flatnonzero(is_val), np.flatnonzero(~is_val)
        if measured.size == 0:
            raise ValueError(
                "tuning left no caption to report on: evaluate more images, or lower validation_share"
            )
        objective = 10 if 10 in ks else max(ks)
        grid = [dataclasses.replace(hybrid, fusion="rrf", k=k) for k in RRF_KS]
        grid += [dataclasses.replace(hybrid, fusion="weighted", alpha=a) for a in ALPHAS]
        scores = []
        for setting in grid:
            s, i = _fuse(setting, (d_scores[val], d_ids[val]), (l_scores[val], l_ids[val]), max(ks))
            r = _recalls(s, i, relevant[val], n_items, ks, "")
            scores.append((r[f"R@{objective}"], sum(r[f"R@{k}"] for k in ks), setting))
        best = max(scores, key=lambda t: (t[0], t[1]))
        hybrid = best[2]
        tuned = {
            "validation_queries": int(val.size),
            "objective": f"t2i/R@{objective}",
            "validation_score": best[0],
            "grid": [{**s.as_dict(), f"R@{objective}": v} for v, _, s in scores],
        }
        notes.append(
            f"Fusion tuned on {val.size} validation captions (their images drawn with seed {seed}): "
            f"{_describe(hybrid)} (validation R@{objective} {best[0]:.4f}); every row is measured on the "
            f"other {measured.size} captions."
        )
    metrics: dict[str, float] = {}
    rel = relevant[measured]
    for prefix, (s, i) in (
        ("dense/t2i/", (d_scores[measured], d_ids[measured])),
        ("lexical/t2i/", (l_scores[measured], l_ids[measured])),
        (
            "hybrid/t2i/",
            _fuse(
                hybrid, (d_scores[measured], d_ids[measured]), (l_scores[measured], l_ids[measured]), max(ks)
            ),
        ),
    ):
        metrics.update(_recalls(np.asarray(s), np.asarray(i), rel, n_items, ks, prefix))
    left_out = int(len(captions) - kept.size)
    if left_out:
        notes.append(f"{left_out} captions whose image is not in the collection were left out.")
    notes.append(
        f"Lexical arm: BM25 over {list(hybrid.fields or collection.text_fields)} of the image items; "
        f"each arm gives its best {wide}; fusion {_describe(hybrid)}."
    )
    return HybridComparison(hybrid, metrics, int(measured.size), left_out, tuned, tuple(notes))


def _describe(hybrid: Hybrid) -> str:
    if hybrid.fusion == "rrf":
        return f"reciprocal rank fusion with k = {hybrid.k}"
    if hybrid.fusion == "weighted":
        return f"weighted, alpha = {hybrid.alpha} (dense share)"
    return "the lexical arm alone"
