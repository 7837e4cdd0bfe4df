"""Index kinds of a Milvus collection, named with the same FAISS factory strings as local collections.

========================  ===========================  ==================================
spec                      Milvus index                 search parameter (tuned)
========================  ===========================  ==================================
``Flat``                  ``FLAT`` (exact)             none
``HNSW{M}``               ``HNSW`` M, efConstruction   ``ef`` (from ``efSearch``)
``IVF{nlist},Flat``       ``IVF_FLAT`` nlist           ``nprobe``
``IVF{nlist},SQ8``        ``IVF_SQ8`` nlist            ``nprobe`` (+ ``refine``)
``IVF{nlist},PQ{m}``      ``IVF_PQ`` nlist, m, nbits   ``nprobe`` (+ ``refine``)
========================  ===========================  ==================================

``index="auto"`` asks :func:`indexes.auto.choose_index` (the one home of the choice by count,
dim and memory budget) and translates its answer. Milvus Lite has no ``IVF_PQ``: there a
``PQ`` choice becomes ``SQ8`` with the same lists, and an explicit ``PQ`` spec is refused.
HNSW graphs are built with ``efConstruction`` 40, FAISS's default, so a graph on Milvus and
one in a local collection are alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from indexes import auto
from indexes.limits import DEFAULT_LIMITS, Limits

__all__ = ["MilvusIndex", "choose", "search_params", "translate"]

HNSW_EF_CONSTRUCTION = 40
DEFAULT_EF = 64  # efSearch before tuning
DEFAULT_NPROBE = 16  # nprobe before tuning
LITE_TYPES = frozenset({"FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"})
EXAMPLES = "'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF1024,SQ8', 'IVF1024,PQ32' or 'auto'"


@dataclass(frozen=True)
class MilvusIndex:
    """One index kind: the spec users see and what Milvus is asked to build."""

    spec: str  # FAISS-style factory string, as reported by index_spec
    kind: str  # "flat" | "hnsw" | "ivf" (the kinds auto.tune knows)
    index_type: str  # Milvus index type
    build: dict[str, Any]  # Milvus build parameters
    nlist: int  # IVF lists (0 otherwise)
    has_codes: bool  # compressed vectors: exact re-scoring (refine) helps


def translate(spec: Any, dim: int, lite: bool) -> MilvusIndex:
    """The Milvus index for factory string ``spec``; ``ValueError`` for what Milvus (or Lite) cannot build."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index spec must be a non-empty string, received {spec!r}; expected {EXAMPLES}")
    text = spec.strip()
    out: MilvusIndex | None = None
    if text == "Flat":
        out = MilvusIndex("Flat", "flat", "FLAT", {}, 0, False)
    elif m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", text):
        links = int(m.group(1))
        if not 2 <= links <= 2048:
            raise ValueError(f"index spec {spec!r}: HNSW M must be in [2, 2048], received {links}")
        build = {"M": links, "efConstruction": HNSW_EF_CONSTRUCTION}
        out = MilvusIndex(f"HNSW{links}", "hnsw", "HNSW", build, 0, False)
    elif m := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x(\d+))?)", text):
        nlist = int(m.group(1))
        if not 1 <= nlist <= 65536:
            raise ValueError(f"index spec {spec!r}: nlist must be in [1, 65536], received {nlist}")
        if m.group(2) == "Flat":
            out = MilvusIndex(f"IVF{nlist},Flat", "ivf", "IVF_FLAT", {"nlist": nlist}, nlist, False)
        elif m.group(2) == "SQ8":
            out = MilvusIndex(f"IVF{nlist},SQ8", "ivf", "IVF_SQ8", {"nlist": nlist}, nlist, True)
        else:
            pq, nbits = int(m.group(3)), int(m.group(4) or 8)
            if pq < 1 or dim % pq:
                raise ValueError(
                    f"index spec {spec!r}: PQ{pq} needs the dim ({dim}) to be a multiple of {pq}; choose another m"
                )
            if not 1 <= nbits <= 16:
                raise ValueError(f"index spec {spec!r}: PQ bits must be in [1, 16], received {nbits}")
            name = f"IVF{nlist},PQ{pq}" + (f"x{nbits}" if nbits != 8 else "")
            build = {"nlist": nlist, "m": pq, "nbits": nbits}
            out = MilvusIndex(name, "ivf", "IVF_PQ", build, nlist, True)
    if out is None:
        raise ValueError(f"index spec {spec!r} has no Milvus counterpart; expected {EXAMPLES}")
    if lite and out.index_type not in LITE_TYPES:
        raise ValueError(
            f"index spec {spec!r} ({out.index_type}) is not available in Milvus Lite, which builds "
            f"{sorted(LITE_TYPES)}: use e.g. 'IVF{out.nlist},SQ8', or a Milvus server"
        )
    return out


def choose(
    n: int, dim: int, memory_budget: int | None, lite: bool, limits: Limits = DEFAULT_LIMITS
) -> MilvusIndex:
    """What ``index="auto"`` builds for ``n`` vectors (see the module doc)."""
    spec = auto.choose_index(n, dim, memory_budget, limits)
    if lite and re.fullmatch(r"IVF\d+,PQ\d+(?:x\d+)?", spec):
        spec = spec.split(",")[0] + ",SQ8"
    return translate(spec, dim, lite)


def search_params(index: MilvusIndex, params: dict[str, Any], k: int) -> dict[str, Any]:
    """Milvus search parameters from the collection's tuned ``params`` (``nprobe`` / ``efSearch``)."""
    if index.kind == "hnsw":
        return {"ef": max(int(params.get("efSearch") or DEFAULT_EF), k)}  # Milvus needs ef >= k
    if index.kind == "ivf":
        return {"nprobe": min(int(params.get("nprobe") or DEFAULT_NPROBE), index.nlist)}
    return {}
