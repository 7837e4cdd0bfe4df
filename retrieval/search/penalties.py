"""Hub penalties computed once per item and looked up at query time.

The penalty of an item under query-bank normalisation (:func:`~retrieval.search.hubness.item_penalties`)
depends only on the item's vector, the bank and the method, never on the query or on the other
items. So it is computed once per item and kept: a corrected query then costs a look-up per
candidate instead of a ``[bank, candidates]`` product.

A :class:`PenaltyTable` holds ``id -> penalty`` for one (bank, method, query modality) and one
collection. It stays exact as the collection changes:

* ids added later are computed when first needed (:meth:`PenaltyTable.lookup` fills misses from
  the collection's stored vectors) or all at once by :meth:`PenaltyTable.update`;
* removed ids are never returned by a search, so their entries are never read; :meth:`update`
  drops them;
* a collection id never names another vector (ids are not reused), so an entry never goes stale.
  A table read from disk is checked before use: same bank digest and parameters, the same
  collection (its creation stamp), and a sample of its entries recomputed from the stored vectors;
  anything else rebuilds it.

Tables of a local collection are stored beside its query bank
(``<collection>.querybank.<query modality>-<method>-<parameter>.penalties.npz``), written atomically
when they change (:meth:`PenaltyTable.save`; :class:`~retrieval.search.Searcher` saves on close).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.io import atomic_write_bytes
from retrieval.search.hubness import BANK_SUFFIX, Hubness, item_penalties

__all__ = ["PenaltyTable", "bank_digest", "penalty_table_path", "precompute_penalties"]

logger = logging.getLogger(__name__)

FORMAT = 1
CHECK_SAMPLE = 16  # entries recomputed when a stored table is opened
CHECK_TOLERANCE = 1e-4  # |stored - recomputed| allowed (float32 sums in another order)
CHUNK = 65536  # ids computed per step when a whole collection is filled


def bank_digest(bank: np.ndarray) -> str:
    """A content digest of one modality's bank vectors ``[B, D]`` (shape included)."""
    rows = np.ascontiguousarray(bank, dtype=np.float32)
    h = hashlib.sha256(f"{rows.shape}".encode())
    h.update(rows.tobytes())
    return h.hexdigest()[:32]


def _parameter(hubness: Hubness) -> str:
    return f"beta{hubness.beta:g}" if hubness.method == "isoftmax" else f"k{int(hubness.k)}"


def penalty_table_path(
    collection_path: str | os.PathLike[str], query_modality: str, hubness: Hubness
) -> Path:
    """Where the table for queries of ``query_modality`` corrected by ``hubness`` is stored for the
    local collection at ``collection_path`` (beside its query bank)."""
    path = Path(collection_path)
    variant = f"{query_modality}-{hubness.method}-{_parameter(hubness)}"
    return path.with_name(f"{path.name}{BANK_SUFFIX.removesuffix('.npz')}.{variant}.penalties.npz")


def _collection_stamp(collection: Any) -> str | None:
    """What tells one collection from another made later at the same place: its creation time."""
    info = getattr(collection, "info", None)
    try:
        described = info() if callable(info) else None
    except Exception:  # a backend that cannot describe itself: the sample check still guards
        described = None
    created = described.get("created") if isinstance(described, dict) else None
    return str(created) if created is not None else None


class PenaltyTable:
    """``id -> penalty`` of a collection's items for one bank, method and query modality.

    Thread-safe: the service queries from several threads. Build one with :meth:`open` (reads the
    stored table when it is still valid), fill it with :meth:`update`, read it with :meth:`lookup`.
    """

    def __init__(
        self,
        bank: np.ndarray,
        hubness: Hubness,
        query_modality: str,
        *,
        stamp: str | None = None,
        path: Path | None = None,
    ) -> None:
        if query_modality not in ("text", "image"):
            raise ValueError(f"query_modality must be 'text' or 'image'; received {query_modality!r}")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)  # [B, D]
        self.hubness = hubness
        self.query_modality = query_modality
        self.digest = bank_digest(self.bank)
        self.stamp = stamp
        self.path = path
        self._ids = np.zeros(0, dtype=np.int64)  # [N] ascending
        self._values = np.zeros(0, dtype=np.float32)  # [N]
        self._recent: dict[int, float] = {}  # computed since the arrays were last merged
        self._dirty = False
        self._lock = threading.Lock()

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        collection: Any,
        bank: np.ndarray,
        hubness: Hubness,
        query_modality: str,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> PenaltyTable:
        """The table of ``collection``: the one stored at ``path`` when it is valid for this bank,
        method and collection, else an empty one (filled as queries need it, or by :meth:`update`)."""
        table = cls(
            bank,
            hubness,
            query_modality,
            stamp=_collection_stamp(collection),
            path=Path(path) if path is not None else None,
        )
        if table.path is not None and table.path.exists():
            why = table._read(collection)
            if why:
                logger.info("hub penalties at %s are recomputed: %s", table.path, why)
                table._ids, table._values, table._recent = np.zeros(0, np.int64), np.zeros(0, np.float32), {}
                table._dirty = True
        return table

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "bank": self.digest,
            "method": self.hubness.method,
            "parameter": _parameter(self.hubness),
            "query_modality": self.query_modality,
            "collection": self.stamp,
        }

    def _read(self, collection: Any) -> str | None:
        """Load the stored table; returns why it cannot be used (``None`` when it was loaded)."""
        assert self.path is not None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                ids = np.asarray(data["ids"], dtype=np.int64)
                values = np.asarray(data["values"], dtype=np.float32)
        except Exception as exc:  # damaged or foreign file: recompute, never fail a search for it
            return f"unreadable ({type(exc).__name__}: {exc})"
        expected = self._meta()
        for key, value in expected.items():
            if meta.get(key) != value:
                return f"{key} differs ({meta.get(key)!r}, now {value!r})"
        if ids.ndim != 1 or ids.shape != values.shape or (len(ids) > 1 and not np.all(np.diff(ids) > 0)):
            return "ids and values do not line up"
        if len(ids):
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(ids, size=min(CHECK_SAMPLE, len(ids)), replace=False))
            live = sample[np.isin(sample, collection.ids())] if hasattr(collection, "ids") else sample
            if len(live):
                fresh = item_penalties(self.bank, collection.vectors(live), self.hubness)  # [s]
                stored = values[np.searchsorted(ids, live)]
                if not np.allclose(fresh, stored, atol=CHECK_TOLERANCE, rtol=0):
                    return "stored penalties do not match the collection's vectors"
        self._ids, self._values = ids, values
        return None

    def update(self, collection: Any, *, chunk_size: int = CHUNK) -> int:
        """Compute every live id of ``collection`` the table lacks and drop the ids it no longer
        holds; returns how many were computed."""
        live = np.asarray(collection.ids(), dtype=np.int64)  # [N] ascending
        with self._lock:
            self._merge()
            keep = np.isin(self._ids, live, assume_unique=True)
            if not keep.all():
                self._ids, self._values, self._dirty = self._ids[keep], self._values[keep], True
            missing = live[~np.isin(live, self._ids, assume_unique=True)]
        for start in range(0, len(missing), chunk_size):
            part = missing[start : start + chunk_size]
            values = item_penalties(self.bank, collection.vectors(part), self.hubness)  # [c]
            with self._lock:
                self._recent.update(zip(part.tolist(), values.tolist()))
                self._dirty = True
        with self._lock:
            self._merge()
        return len(missing)

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._ids) + len(self._recent)

    def lookup(self, ids: np.ndarray, collection: Any) -> np.ndarray:
        """``[n]`` float32 penalties of ``ids`` (live ids of ``collection``); ids the table lacks
        are computed from the collection's stored vectors and kept."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty(len(ids), dtype=np.float32)
        with self._lock:
            pos = np.searchsorted(self._ids, ids)  # [n]
            pos_ok = np.minimum(pos, max(len(self._ids) - 1, 0))
            found = (
                (pos < len(self._ids)) & (self._ids[pos_ok] == ids)
                if len(self._ids)
                else np.zeros(len(ids), bool)
            )
            out[found] = self._values[pos_ok[found]]
            rest = np.flatnonzero(~found)
            missing = []
            for i in rest.tolist():
                value = self._recent.get(int(ids[i]))
                if value is None:
                    missing.append(i)
                else:
                    out[i] = value
        if missing:
            todo = ids[missing]
            values = item_penalties(self.bank, collection.vectors(todo), self.hubness)  # [m]
            out[missing] = values
            with self._lock:
                self._recent.update(zip(todo.tolist(), values.tolist()))
                self._dirty = True
                if len(self._recent) > max(4096, len(self._ids) // 8):
                    self._merge()
        return out

    def _merge(self) -> None:
        """Fold the recent entries into the sorted arrays (the lock is held)."""
        if not self._recent:
            return
        ids = np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent))
        values = np.fromiter(self._recent.values(), dtype=np.float32, count=len(self._recent))
        all_ids = np.concatenate([self._ids, ids])
        all_values = np.concatenate([self._values, values])
        order = np.argsort(all_ids, kind="stable")
        all_ids, all_values = all_ids[order], all_values[order]
        first = np.ones(len(all_ids), dtype=bool)
        first[1:] = all_ids[1:] != all_ids[:-1]
        self._ids, self._values = all_ids[first], all_values[first]
        self._recent = {}

    # -- storing ----------------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Entries were computed or dropped since the table was read or saved."""
        return self._dirty

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the table atomically (default: where it was opened from)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("this penalty table has no path: pass one to save it")
        with self._lock:
            self._merge()
            buffer = io.BytesIO()
            np.savez(buffer, meta=np.array(json.dumps(self._meta())), ids=self._ids, values=self._values)
            atomic_write_bytes(target, buffer.getvalue())
            self._dirty = False
        return target


def precompute_penalties(
    collection: Any,
    bank: Any,
    hubness: Hubness,
    *,
    query_modalities: tuple[str, ...] = ("text", "image"),
    save: bool = True,
) -> dict[str, PenaltyTable]:
    """Fill the penalty tables of a local ``collection`` for a query bank (a
    :class:`~retrieval.search.hubness.QueryBank`), one per query modality the bank holds, and store
    them beside the bank (``save``). Call it after a bank is built or items are added, so that the
    first corrected queries already cost a look-up."""
    tables = {}
    location = getattr(collection, "path", None)
    local = location is not None and Path(str(location)).is_dir()
    for modality in query_modalities:
        if modality not in bank.vectors or len(bank.vectors[modality]) == 0:
            continue
        path = penalty_table_path(location, modality, hubness) if local else None
        table = PenaltyTable.open(collection, bank.for_queries(modality), hubness, modality, path=path)
        table.update(collection)
        if save and path is not None and table.dirty:
            table.save()
        tables[modality] = table
    return tables
