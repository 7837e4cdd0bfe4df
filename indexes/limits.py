"""Every size at which the storage code changes path, in one frozen value a collection is opened with.

A collection searches a filter exactly below one size and with its index above it, trains an IVF
index from another, writes its buffer as a segment past a third, merges segments by tiers... Each
of those sizes is a field here, so tests (and users with unusual workloads) can set them without
patching modules: the differential fuzzer in ``tests/indexes`` opens every collection with all of
them small, so a few hundred rows cross every path.

>>> from indexes import Collection, Limits
>>> small = Limits(exact_filter_max=8, buffer_bytes=4_096, merge_factor=3)
>>> Collection.create(path, dim=8, limits=small)  # doctest: +SKIP

Limits are a property of a handle, not of the collection on disk: nothing here is saved, and two
handles of one collection may use different limits. Fields marked *Milvus* apply to
:class:`indexes.milvus.MilvusCollection` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["DEFAULT_BUFFER_BYTES", "DEFAULT_LIMITS", "Limits", "as_limits"]

DEFAULT_BUFFER_BYTES = 256 << 20  # the buffer of a handle without memory budget (Limits.buffer_bytes None)


@dataclass(frozen=True)
class Limits:
    """Sizes and shares at which the storage code changes path (defaults: what the library uses)."""

    # ---- search planning (indexes.planner)
    exact_filter_max: int = 20_000  # filters matching at most this many items are searched exactly
    hnsw_sparse_filter: float = 0.05  # HNSW searches filters admitting less than this share exactly
    exact_block_rows: int = 1 << 16  # brute force reads stored vectors in blocks of this many rows
    thread_queries: int = 32  # batches of twice this many queries are split across search threads
    filter_cache_entries: int = 64  # filter results kept per handle (least recently used dropped first)
    filter_cache_bytes: int = 256 << 20  # ... and the bytes they may hold
    # ---- memory and segments (indexes.collection, indexes.compaction)
    buffer_bytes: int | None = None  # unsaved bytes kept in memory before they become a segment
    #                                  (None: memory_budget / 8, at least 64 KB; DEFAULT_BUFFER_BYTES without)
    segment_max_bytes: int = 2 << 30  # merges write segments of at most this many vector bytes
    #                                   (memory_budget / 2 when smaller)
    segment_min_rows: int = 1_024  # ... but never cap a segment below this many rows
    merge_factor: int = 8  # merge this many adjacent segments of one size tier
    tier_floor: int = 8_192  # segments with fewer live rows share the lowest tier
    max_segments: int = 24  # beyond this many segments the smallest neighbours merge
    deleted_fraction: float = 0.25  # rewrite a segment once this share of its rows is removed
    # ---- training and rebuilding (indexes.faiss_index, indexes.building)
    points_per_centroid: int = 39  # IVF / PQ train from this many vectors per centroid (FAISS advice)
    codes_min_train: int = 1_000  # other trainable codes (SQ8, ...) train from this many vectors
    retrain_growth: float = 4.0  # needs_rebuild once the collection holds this many times its training set
    tombstone_rebuild_fraction: float = 0.10  # needs_rebuild once this share of stored rows is removed
    # ---- index="auto" and tuning (indexes.auto, indexes.choice, indexes.tuning)
    flat_max: int = 20_000  # auto keeps exact search (Flat) up to this many vectors
    hnsw_max: int = 300_000  # auto tries HNSW before IVF up to this many vectors
    tune_min: int = 1_000  # search parameters are tuned from this many vectors
    tune_queries: int = 200  # queries per query set that tuning measures with
    retune_after_merge: float = 0.25  # re-tune once merges rewrote this share of the rows
    # ---- text index (indexes.lexical)
    lexicon_chunk_rows: int = 65_536  # rows tokenized at a time (and postings stored per chunk of rows)
    # ---- opening and checking (indexes.segment)
    verify_on_open_bytes: int = 64 << 20  # files up to this size are checksummed whole when opened
    # ---- Milvus
    exact_fill_max: int = 50_000  # Milvus: rows left short are answered exactly when at most this many match
    request_rows: int = 4_096  # Milvus: rows per write, read or delete request (pages of a scan: twice this)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "buffer_bytes":
                continue
            if f.type == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            if not ok:
                raise ValueError(f"Limits.{f.name} must be a number >= 0, received {value!r}")
        for name in (
            "exact_block_rows",
            "thread_queries",
            "segment_min_rows",
            "tier_floor",
            "request_rows",
            "lexicon_chunk_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, received {getattr(self, name)!r}")
        if self.merge_factor < 2:
            raise ValueError(f"Limits.merge_factor must be >= 2, received {self.merge_factor!r}")
        if self.points_per_centroid < 1 or self.codes_min_train < 1:
            raise ValueError("Limits.points_per_centroid and codes_min_train must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Limits:
        """Build from a dict; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Limits field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)


DEFAULT_LIMITS = Limits()


def as_limits(limits: Any) -> Limits:
    """``limits`` checked, None meaning the defaults."""
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise ValueError(f"limits must be an indexes.Limits or None, received {type(limits).__name__}")
    return limits
