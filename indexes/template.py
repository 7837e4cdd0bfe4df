"""What every segment's index is built from, and how one search runs over all of them.

A collection is made of segments (see :mod:`indexes.segment`); each holds its own share of the
index, labelled with the segment's *row numbers*. The :class:`Template` is the part that is
shared:

* ``Flat``: nothing; segments are searched exactly over their raw vectors.
* HNSW (``HNSW32``): each segment has its own graph; nothing needs training.
* IVF (``IVF1024,Flat``, ``IVF4096,PQ32``, ``OPQ16,IVF256,PQ16``...): one trained index without
  vectors (the coarse quantizer, codebooks, pre-transform), written once per training. A
  segment stores only its inverted lists (:func:`indexes.faiss_index.write_lists`), which are
  memory-mapped when opened. A search assigns the queries to lists once with the shared
  quantizer and scans each segment's lists for those assignments
  (``IndexIVF::search_preassigned``), so many segments cost what one index over the same
  vectors costs. This is the layout of a "shared IVF" that clip-retrieval / autofaiss build
  from shards, kept as separate immutable files instead of one merged file.
* other code indexes (``PQ32``, ``SQ8``): a trained empty index that each segment clones.

:class:`PartIndex` is one segment's index; labels are rows, except in collections written by
format 1 (one index over the whole collection, labelled with ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import faiss_index as fi
from indexes.limits import DEFAULT_LIMITS, Limits

__all__ = ["PartIndex", "Template"]


@dataclass
class PartIndex:
    """One segment's share of the index."""

    index: faiss.Index  # an IVF view over shared lists ("lists") or a whole index ("faiss")
    kind: str  # "lists" | "faiss"
    labels: str = "rows"  # what search returns: "rows" of the segment, or collection "ids" (format 1)
    keep: list[Any] = field(default_factory=list)  # objects FAISS points into (quantizer owner, ...)
    takes_selector: bool | None = None  # search accepts an ID selector (found out on first use)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


class Template:
    """The factory spec of a collection's index plus, for trainable kinds, the trained empty index."""

    def __init__(self, spec: str, dim: int, metric: str, trained: faiss.Index | None = None) -> None:
        self.spec = spec
        self.dim = int(dim)
        self.metric = metric
        self.info = fi.describe(fi.build_index(spec, dim, metric, keep_ids=False))  # validates the spec
        self.trained = trained
        self._ivf = faiss.extract_index_ivf(trained) if trained is not None and self.is_ivf else None
        self._chain: list[Any] = []
        if trained is not None and isinstance(faiss.downcast_index(trained), faiss.IndexPreTransform):
            pre = faiss.downcast_index(trained)
            self._chain = [pre.chain.at(i) for i in range(pre.chain.size())]

    # ------------------------------------------------------------------ what kind of index
    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def is_flat(self) -> bool:
        return self.info.kind == "flat"

    @property
    def is_ivf(self) -> bool:
        return self.info.kind == "ivf"

    @property
    def needs_training(self) -> bool:
        return self.info.needs_training

    @property
    def ready(self) -> bool:
        """Segments can get an index now (trainable kinds: once trained)."""
        return not self.is_flat and (not self.needs_training or self.trained is not None)

    @property
    def nlist(self) -> int:
        return self.info.nlist

    def min_train_size(self, limits: Limits = DEFAULT_LIMITS) -> int:
        """Vectors the collection waits for before training this kind (0: no training)."""
        index = fi.build_index(self.spec, self.dim, self.metric, keep_ids=False)
        return fi.min_train_size(index, limits.points_per_centroid, limits.codes_min_train)

    def has_codes(self) -> bool:
        """True when the index stores compressed vectors (its scores are approximate)."""
        return fi.has_codes(fi.build_index(self.spec, self.dim, self.metric, keep_ids=False))

    # ------------------------------------------------------------------ training
    def trained_on(self, sample: np.ndarray, seed: int = 0) -> Template:
        """A new template trained on ``sample`` [m, d] (already a seeded sample of the collection)."""
        index = fi.build_index(self.spec, self.dim, self.metric, keep_ids=False)
        fi.train_index(index, sample, seed=seed)
        return Template(self.spec, self.dim, self.metric, index)

    def write(self, path: Path) -> dict[str, Any]:
        assert self.trained is not None
        return fi.write_index(self.trained, path)

    @classmethod
    def read(cls, spec: str, dim: int, metric: str, path: Path) -> Template:
        return cls(spec, dim, metric, fi.read_index(path))

    # ------------------------------------------------------------------ segment indexes
    def transform(self, x: np.ndarray) -> np.ndarray:
        """Apply the pre-transform chain (e.g. OPQ) that the IVF part sees: [n, d] -> [n, d']."""
        for vt in self._chain:
            x = vt.apply_py(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def new_part(self) -> PartIndex | None:
        """An empty in-memory index for one segment (None for Flat, or before training)."""
        if not self.ready:
            return None
        if self.is_ivf:
            return self._ivf_view(None)
        if self.trained is not None:
            return PartIndex(faiss.clone_index(self.trained), "faiss")
        return PartIndex(fi.build_index(self.spec, self.dim, self.metric, keep_ids=False), "faiss")

    def add(self, part: PartIndex, vectors: np.ndarray, first_row: int) -> None:
        """Add rows ``first_row ..`` of a segment ([n, d] float32) to its index."""
        if vectors.shape[0] == 0:
            return
        if part.kind == "lists":
            rows = np.arange(first_row, first_row + vectors.shape[0], dtype=np.int64)
            part.index.add_with_ids(self.transform(vectors), rows)
        else:
            assert part.ntotal == first_row, "segment indexes label vectors by row"
            part.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def build_part(self, vectors: np.ndarray, chunk: int = 1 << 16) -> PartIndex | None:
        """Index all rows of ``vectors`` [n, d] (a memmap is read in chunks)."""
        part = self.new_part()
        if part is not None:
            for lo in range(0, vectors.shape[0], chunk):
                self.add(part, np.ascontiguousarray(vectors[lo : lo + chunk], dtype=np.float32), lo)
        return part

    def write_part(self, part: PartIndex, path: Path) -> dict[str, Any]:
        if part.kind == "lists":
            return fi.write_lists(part.index.invlists, path)
        return fi.write_index(part.index, path)

    def load_part(self, path: Path, kind: str, mmap: bool = True) -> PartIndex:
        """Open a segment index written by :meth:`write_part` (memory-mapped by default)."""
        if kind == "lists":
            if self._ivf is None:
                raise ValueError(f"{path} holds IVF lists but the collection has no trained IVF template")
            lists = fi.read_lists(path)
            return self._ivf_view(lists)
        return PartIndex(fi.read_index(path, mmap=mmap), "faiss")

    def _ivf_view(self, lists: faiss.InvertedLists | None) -> PartIndex:
        """An IVF index object that shares this template's quantizer (never copied) and owns ``lists``."""
        ivf = self._ivf
        assert ivf is not None
        shared = ivf.quantizer
        placeholder = faiss.IndexFlat(ivf.d, ivf.metric_type)  # cloned instead of the (large) quantizer
        ivf.quantizer = placeholder
        try:
            view = faiss.clone_index(ivf)
        finally:
            ivf.quantizer = shared
        copy = view.quantizer
        view.own_fields = False
        view.quantizer = shared
        copy.this.own(True)  # Python frees the cloned placeholder with the view's keep list
        if lists is not None:
            if lists.nlist != ivf.nlist:
                raise ValueError(f"IVF lists have {lists.nlist} lists, the template has {ivf.nlist}")
            view.replace_invlists(lists, True)
            view.ntotal = int(sum(lists.list_size(i) for i in range(lists.nlist)))
        return PartIndex(view, "lists", keep=[self, copy])

    # ------------------------------------------------------------------ search
    def coarse(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(transformed queries [n, d'], centroid scores [n, p], list ids [n, p]) for ``nprobe`` lists."""
        assert self._ivf is not None
        xt = self.transform(q)
        nprobe = int(min(max(nprobe, 1), self.nlist))
        dq, iq = self._ivf.quantizer.search(xt, nprobe)
        return xt, np.ascontiguousarray(dq), np.ascontiguousarray(iq)


def search_part(
    part: PartIndex,
    q: np.ndarray,
    k: int,
    knobs: dict[str, Any],
    selector: Any,
    coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw FAISS answer of one segment index: (distances [n, k], labels [n, k]); -1 where missing."""
    n = q.shape[0]
    if part.kind == "lists":
        assert coarse is not None
        xt, dq, iq = coarse
        dist = np.empty((n, k), dtype=np.float32)
        labels = np.empty((n, k), dtype=np.int64)
        params = faiss.SearchParametersIVF(sel=selector, nprobe=int(iq.shape[1]))
        part.index.search_preassigned_c(
            n,
            faiss.swig_ptr(xt),
            k,
            faiss.swig_ptr(iq),
            faiss.swig_ptr(dq),
            faiss.swig_ptr(dist),
            faiss.swig_ptr(labels),
            False,
            params,
        )
        return dist, labels
    params = fi.part_search_params(part.index, selector, knobs, k)
    return part.index.search(q, k, params=params)
