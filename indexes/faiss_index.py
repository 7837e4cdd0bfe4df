"""FAISS indexes behind one small interface: build from a factory string, train, add, search, save, load.

Every index built here answers with the collection's own int64 ids: IVF indexes store
ids natively, every other kind is wrapped in ``IndexIDMap2``. Scores follow one
convention, *higher is better*: inner products for ``metric="ip"`` and negated squared
L2 distances for ``metric="l2"``.

Kinds (what the wrapped index is, found by unwrapping pre-transforms and id maps):

========  =======================  ============  ==============  ===================
kind      example specs            training      remove_ids      ID selectors
========  =======================  ============  ==============  ===================
flat      ``Flat``                 no            yes             yes (not used)
hnsw      ``HNSW32``               no            **no**          yes
ivf       ``IVF1024,Flat``,        yes           yes             yes
          ``IVF4096,PQ32x8``,
          ``OPQ32,IVF1024,PQ32``
codes     ``PQ32``, ``SQ8``, ...   maybe         yes             no
========  =======================  ============  ==============  ===================

HNSW graphs cannot delete nodes; the collection masks removed ids with a selector
(tombstones) until the index is rebuilt from the raw vector store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes.files import DamagedFileError, DigestWriter
from indexes.limits import DEFAULT_LIMITS

__all__ = [
    "METRICS",
    "IndexInfo",
    "build_index",
    "describe",
    "has_codes",
    "index_ids_search",
    "min_train_size",
    "read_index",
    "read_lists",
    "search_params",
    "set_params",
    "train_index",
    "write_index",
    "write_lists",
]

METRICS: dict[str, int] = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}

DEFAULT_EF_SEARCH = 16  # FAISS's default efSearch for HNSW
# faiss's own k-means advice: at least 39 training points per centroid (the defaults live in Limits).
POINTS_PER_CENTROID = DEFAULT_LIMITS.points_per_centroid
CODES_MIN_TRAIN = DEFAULT_LIMITS.codes_min_train
# upper bound on the training sample (k-means cost grows with it; 64 per centroid is ample for IVF).
MAX_POINTS_PER_CENTROID = 64


@dataclass(frozen=True)
class IndexInfo:
    """What kind of index a factory string builds."""

    kind: str  # "flat" | "hnsw" | "ivf" | "codes"
    nlist: int  # IVF lists (0 when not IVF)
    needs_training: bool  # the untrained index cannot take vectors yet
    supports_remove: bool  # index.remove_ids works
    supports_selector: bool  # search accepts SearchParameters(sel=...)


def _unwrap(index: faiss.Index) -> faiss.Index:
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap2, faiss.IndexIDMap)):
            index = faiss.downcast_index(index.index)
        else:
            return index


def describe(index: faiss.Index) -> IndexInfo:
    """Classify an index (see the module table)."""
    inner = _unwrap(index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return IndexInfo("ivf", int(ivf.nlist), True, True, True)
    if isinstance(inner, faiss.IndexHNSW):
        return IndexInfo("hnsw", 0, False, False, True)
    if isinstance(inner, faiss.IndexFlat):
        return IndexInfo("flat", 0, False, True, True)
    return IndexInfo("codes", 0, True, True, False)


_SPEC_RE = re.compile(r"^[A-Za-z0-9_,.x=\-]+$")


def build_index(spec: str, dim: int, metric: str, keep_ids: bool = True) -> faiss.Index:
    """A new, empty index for factory string ``spec``.

    ``keep_ids=True`` makes it store the caller's int64 ids (IVF natively, other kinds through
    ``IndexIDMap2``); ``keep_ids=False`` leaves FAISS's sequential labels (row numbers), which is
    what a collection's segment indexes use. Raises ``ValueError`` when FAISS rejects the
    string or ``dim`` does not suit it.
    """
    if not isinstance(spec, str) or not spec.strip() or not _SPEC_RE.match(spec.strip()):
        raise ValueError(
            f"index spec {spec!r} is not a FAISS factory string; expected e.g. 'Flat', 'HNSW32', "
            "'IVF1024,Flat', 'IVF4096,PQ32x8', 'OPQ32,IVF1024,PQ32' or 'auto'"
        )
    spec = spec.strip()
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; expected one of {sorted(METRICS)}")
    if spec.upper().startswith("IDMAP"):
        raise ValueError(
            f"index spec {spec!r} should not include IDMap: ids are always kept; drop the 'IDMap,' prefix"
        )
    try:
        index = faiss.index_factory(int(dim), spec, METRICS[metric])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ValueError(
            f"FAISS cannot build index spec {spec!r} for dim {dim} ({first}); check the factory string "
            "(for PQm the dim must be divisible by m) or use index='auto'"
        ) from exc
    inner = _unwrap(index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False  # only serves polysemous filtering, which is never enabled here
    if keep_ids and faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)
    return index


def has_codes(index: faiss.Index) -> bool:
    """True when the index stores compressed vectors (scores are approximate: worth refining)."""
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return True  # OPQ and other transforms feed compressed codes in practice
    inner = _unwrap(index)
    return not isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))


def min_train_size(
    index: faiss.Index, points_per_centroid: int = POINTS_PER_CENTROID, codes_min: int = CODES_MIN_TRAIN
) -> int:
    """How many vectors the collection waits for before training ``index`` (0: no training).

    ``points_per_centroid`` per IVF list and per PQ centroid (never fewer points than centroids:
    k-means needs one per centroid), ``codes_min`` for other trainable codes (SQ8, ...).
    """
    info = describe(index)
    if not info.needs_training:
        return 0
    need = 1
    per = max(int(points_per_centroid), 1)
    if info.kind == "ivf":
        need = max(need, per * info.nlist)
    inner = _unwrap(index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, per * (1 << int(pq.nbits)))
    elif info.kind == "codes":
        need = max(need, int(codes_min))
    return need


def train_index(
    index: faiss.Index, vectors: np.ndarray, seed: int = 0, rows: np.ndarray | None = None
) -> int:
    """Train on a seeded random sample of ``vectors[rows]`` (all rows when None); returns the sample size.

    Only the sampled rows are copied, so ``vectors`` may be a large (or memory-mapped) array.
    """
    rows = np.arange(vectors.shape[0]) if rows is None else rows
    info = describe(index)
    cap = max(MAX_POINTS_PER_CENTROID * max(info.nlist, 1), 65_536)
    if rows.size > cap:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)  # [min(n, cap), d]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
    index.train(sample)
    return int(sample.shape[0])


def set_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Apply ``nprobe`` / ``efSearch`` from ``params`` to ``index`` (missing keys keep defaults)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and params.get("nprobe"):
        ivf.nprobe = int(min(params["nprobe"], ivf.nlist))
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW) and params.get("efSearch"):
        inner.hnsw.efSearch = int(params["efSearch"])


def search_params(
    index: faiss.Index, selector: faiss.IDSelector | None, k: int, fraction: float = 1.0
) -> faiss.SearchParameters | None:
    """SearchParameters carrying ``selector`` plus the index's current nprobe / efSearch.

    ``fraction`` is the share of the index the selector accepts: a filtered search meets
    correspondingly fewer eligible items per list or graph step, so nprobe / efSearch grow
    by ``1 / fraction`` (at most 16x; skipped items cost a membership test, not a distance).
    """
    if selector is None:
        return None
    boost = min(16.0, 1.0 / max(fraction, 1e-6))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(min(ivf.nlist, ivf.nprobe * boost)))
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(
            sel=selector, efSearch=int(max(int(inner.hnsw.efSearch), k) * boost)
        )
    return faiss.SearchParameters(sel=selector)


def part_search_params(
    index: faiss.Index, selector: faiss.IDSelector | None, knobs: dict[str, Any], k: int
) -> faiss.SearchParameters | None:
    """SearchParameters for one segment index: ``knobs`` (``nprobe`` / ``efSearch``, already widened for
    filters) and ``selector``; the index object itself is never modified, so searches may run concurrently."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nprobe = int(knobs.get("nprobe") or ivf.nprobe)
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(min(max(nprobe, 1), ivf.nlist)))
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW):
        ef = int(max(int(knobs.get("efSearch") or inner.hnsw.efSearch), k))
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
    return None if selector is None else faiss.SearchParameters(sel=selector)


def accepts_selector(index: faiss.Index) -> bool:
    """Whether ``index.search`` takes an ID selector (some code indexes, e.g. ``PQ32``, refuse it)."""
    info = describe(index)
    if info.kind != "codes":
        return True
    probe = faiss.IDSelectorAll()
    try:
        index.search(np.zeros((1, index.d), dtype=np.float32), 1, params=faiss.SearchParameters(sel=probe))
    except RuntimeError:
        return False
    return True


def index_ids_search(
    index: faiss.Index, queries: np.ndarray, k: int, metric: str, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``queries`` [n, d] float32 -> (scores [n, k] float32 higher-is-better, ids [n, k] int64)."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW) and params is None and inner.hnsw.efSearch < k:
        params = faiss.SearchParametersHNSW(efSearch=int(k))
    scores, ids = index.search(queries, k, params=params)  # [n, k], [n, k]
    if metric == "l2":
        np.negative(scores, out=scores)
    scores[ids < 0] = -np.inf
    return scores, ids


def write_index(index: faiss.Index, path: Path) -> dict[str, Any]:
    """Write ``index`` to the new file ``path`` (fsynced); returns its digest (:mod:`indexes.files`).

    The bytes go through Python file objects, so a full disk is an ``OSError`` with its errno.
    """
    with DigestWriter(path) as out:
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))
    assert out.digest is not None
    return out.digest


def write_lists(invlists: faiss.InvertedLists, path: Path) -> dict[str, Any]:
    """Write IVF inverted lists alone (no quantizer) to the new file ``path``; returns its digest."""
    with DigestWriter(path) as out:
        faiss.write_InvertedLists(invlists, faiss.PyCallbackIOWriter(out.write))
    assert out.digest is not None
    return out.digest


def read_lists(path: Path) -> faiss.InvertedLists:
    """Map inverted lists written by :func:`write_lists` read-only from disk (nothing is loaded)."""
    reader = faiss.FileIOReader(str(path))
    try:
        return faiss.read_InvertedLists(reader, faiss.IO_FLAG_MMAP)
    except RuntimeError as exc:
        raise DamagedFileError(path, f"FAISS cannot read it ({_last_line(exc)})") from exc


def read_index(path: Path, mmap: bool = False, ivf: bool = False) -> faiss.Index:
    """Read an index; ``mmap=True`` maps its large arrays from disk instead of loading them: the
    inverted lists of an IVF index (``ivf=True``), the codes and graph of every other kind."""
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if ivf else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise DamagedFileError(path, f"FAISS cannot read it ({_last_line(exc)})") from exc


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
