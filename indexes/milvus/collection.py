"""MilvusCollection: the surface of :class:`indexes.Collection` on a Milvus server, cluster or Milvus Lite.

Layout in Milvus (one Milvus collection per toolkit collection)::

    id      INT64 primary key     ids chosen by the collection (never by Milvus), never reused
    vector  FLOAT_VECTOR[dim]     the float32 vector, exactly as added
    meta    JSON                  the item's metadata dict (what `where` filters read)
    property siamese_retrieval.state   dim, metric, fingerprint, next id, fields, index, params
                                       (see indexes.milvus.state)

Writes and their visibility. ``add`` and ``remove`` reach the server at once (Milvus has no
transactions to roll back): the handle that made them sees them in its next read, other
handles within about a second. ``save()`` is the commit point: it flushes (the rows become
sealed, durable segments), rebuilds the index when ``index="auto"`` calls for another kind,
tunes search parameters when the count has doubled, and records the state. Leaving a
``with`` block normally saves; leaving it by an exception does not (what was added stays).
Reads use Milvus's Session consistency (read-your-own-writes, no wait otherwise); opening a
handle waits once (a Strong read) so it sees everything written before it opened. (A Strong
read costs about 200 ms on a server: it waits for the next time tick. Session reads do not.)

One writer at a time: a writable open takes the writer token recorded in the state, and a
handle whose token was taken over fails its next write with ``CollectionBusyError``. Ids are
reserved in the state *before* rows are inserted, so a crash can leave a gap but never
hands an id out twice (and since a server that stops abruptly may come back with an older
state, a writable open also moves the next id past any row found above it). ``add(..., ids=...)`` stores rows under given ids with an upsert, so
re-sending a batch after a failure never doubles it (this is what makes
:func:`indexes.copy_collection` safe to re-run).

Search runs inside Milvus with the filter as a boolean expression (pre-filtering; see
:mod:`indexes.milvus.expr`). Rows that come back short of ``min(k, matches)`` are answered
again exactly, so a filtered search returns k hits whenever k items match. ``refine=r`` asks
for ``r * k`` candidates and rescores them with the stored vectors.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexes import auto, exact
from indexes.checks import MAX_ID, check_creation
from indexes.fingerprint import check_fingerprint
from indexes.lexical.config import text_index_of
from indexes.limits import DEFAULT_LIMITS, Limits, as_limits
from indexes.location import Location
from indexes.metadata import validate_metadata
from indexes.milvus import kinds
from indexes.milvus.arrays import as_ids, as_vectors, check_int
from indexes.milvus.client import Client
from indexes.milvus.expr import compile_where
from indexes.milvus.indexing import INDEX_WAIT, MilvusIndexing
from indexes.milvus.opening import check_schema, json_dict, milvus_location
from indexes.milvus.state import FORMAT_VERSION, State, now
from indexes.milvus.table import METRICS, Table
from indexes.milvus.text import MilvusText, add_text_fields, create_text_index, text_support
from indexes.milvus.tuning import MilvusTuning
from indexes.persist import CollectionBusyError

__all__ = ["MilvusCollection"]

logger = logging.getLogger(__name__)

MAX_TOPK = 16_384  # Milvus's limit on k (and on rows per query)
SCORE_CONVENTION = {"ip": "inner product (higher is better)", "l2": "-squared L2 distance (higher is better)"}


class MilvusCollection(MilvusIndexing, MilvusTuning, MilvusText):
    """Vectors + metadata in a Milvus collection. Build with :meth:`create`, reopen with :meth:`open`."""

    def __init__(
        self,
        location: Location,
        client: Client,
        state: State,
        read_only: bool,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._loc = location
        self._limits = limits
        self._client = client
        self._table = Table(client, str(location.name), str(location), state.metric, limits.request_rows)
        self._state = state
        self._table.text = self.text_index
        self._read_only = read_only
        self._token: str | None = None  # the writer token this handle holds (writable handles)
        self._index = kinds.translate(state.index_spec, state.dim, client.lite)
        self._dirty = False
        self._closed = False

    # ================================================================ create / open / close
    @classmethod
    def create(
        cls,
        location: str | Location,
        dim: int,
        metric: str = "ip",
        index: str = "auto",
        fingerprint: str | None = None,
        memory_budget: int | str | None = None,
        recall_target: float = 0.95,
        overwrite: bool = False,
        model_info: dict[str, Any] | None = None,
        limits: Limits | None = None,
        text_fields: Sequence[str] | None = None,
        stemming: str | None = None,
    ) -> MilvusCollection:
        """Create an empty collection at a Milvus ``location`` and return it open for writing.

        The arguments mean what they mean for :meth:`indexes.Collection.create` (``model_info`` is
        kept in the collection's state and shown by :meth:`info`); ``index`` takes
        the factory strings of :mod:`indexes.milvus.kinds` or ``"auto"``. ``overwrite=True`` drops
        an existing collection of this toolkit first (never a collection made by something else).
        ``limits``: the sizes at which this handle changes path (see :class:`indexes.Limits`).
        ``text_fields`` / ``stemming``: a text index searched by Milvus's BM25 (Milvus 2.5+; see
        :mod:`indexes.milvus.text`).
        """
        loc = milvus_location(location)
        text_index = text_index_of(text_fields, stemming)
        limits = as_limits(limits)
        dim = check_int("dim", dim, 1)
        if dim > 32_768:
            raise ValueError(f"dim must be at most 32768 for Milvus, received {dim}")
        check_creation(metric, METRICS, recall_target, fingerprint)
        budget = auto.parse_memory(memory_budget)
        model_info = json_dict("model_info", model_info)
        requested = index.strip() if isinstance(index, str) else index
        client = Client(loc)
        try:
            if text_index is not None:
                text_support(client, text_index)
            lite = client.lite
            built = (
                kinds.choose(0, dim, budget, lite, limits)
                if requested == "auto"
                else kinds.translate(requested, dim, lite)
            )
            name = str(loc.name)
            if client.call("checking the collection", "has_collection", name):
                desc = client.call("reading the collection", "describe_collection", name)
                State.from_properties(desc.get("properties") or {}, str(loc))  # refuses foreign collections
                if not overwrite:
                    raise FileExistsError(f"collection {loc} already exists: open it, or pass overwrite=True")
                client.call("dropping the old collection", "drop_collection", name)
            stamp = now()
            state = State(
                dim=dim,
                metric=metric,
                fingerprint=fingerprint,
                next_id=0,
                fields=(),
                index_requested=str(requested),
                index_spec=built.spec,
                params={"built_on": 0},
                memory_budget=budget,
                recall_target=float(recall_target),
                created=stamp,
                updated=stamp,
                writer=secrets.token_hex(8),
                model_info=model_info,
                text_index=text_index.as_dict() if text_index else None,
            )
            schema = client.schema(dim)
            if text_index is not None:
                add_text_fields(schema, client, text_index)
            client.call(
                "creating the collection",
                "create_collection",
                name,
                schema=schema,
                consistency_level="Session",
                properties=state.to_properties(),
                description=f"siamese-retrieval collection: dim {dim}, metric {metric}, model {fingerprint}",
            )
            coll = cls(loc, client, state, read_only=False, limits=limits)
            coll._token = state.writer
            coll._table.create_index(built, INDEX_WAIT)
            if text_index is not None:
                create_text_index(client, name)
            coll._table.ensure_loaded()
        except BaseException:
            client.close()
            raise
        return coll

    @classmethod
    def open(
        cls,
        location: str | Location,
        mmap: bool = False,
        read_only: bool = False,
        limits: Limits | None = None,
    ) -> MilvusCollection:
        """Open an existing collection (``mmap`` is accepted for parity: memory mapping is a server setting).

        A writable open takes over the writer token (see the module doc). ``limits`` as in :meth:`create`.
        """
        loc = milvus_location(location)
        limits = as_limits(limits)
        client = Client(loc)
        try:
            name = str(loc.name)
            if not client.call("checking the collection", "has_collection", name):
                names = client.call("listing collections", "list_collections")
                raise FileNotFoundError(
                    f"collection {loc} does not exist (collections there: {sorted(names)[:20]}): check the "
                    "name, or create it first"
                )
            desc = client.call("reading the collection", "describe_collection", name)
            state = State.from_properties(desc.get("properties") or {}, str(loc))
            check_schema(desc, state, loc)
            coll = cls(loc, client, state, read_only=read_only, limits=limits)
            coll._table.ensure_loaded()
            coll._table.sync()
            if not read_only:
                coll._token = secrets.token_hex(8)
                next_id = coll._table.next_free_id(coll._state.next_id)
                if next_id != coll._state.next_id:
                    logger.warning(
                        "%s: rows with ids up to %d exist but the recorded next id was %d (a server restart "
                        "lost the last state change); ids continue from %d",
                        loc,
                        next_id - 1,
                        coll._state.next_id,
                        next_id,
                    )
                state = coll._state.updated_with(writer=coll._token, next_id=next_id)
                coll._put_state(state, check=False)
        except BaseException:
            client.close()
            raise
        return coll

    @staticmethod
    def exists(location: str | Location) -> bool:
        """True when a collection exists at ``location``."""
        loc = milvus_location(location)
        client = Client(loc)
        try:
            return bool(client.call("checking the collection", "has_collection", str(loc.name)))
        finally:
            client.close()

    @staticmethod
    def drop(location: str | Location) -> None:
        """Delete the collection at ``location`` with all its items (only a collection this toolkit made)."""
        loc = milvus_location(location)
        client = Client(loc)
        try:
            name = str(loc.name)
            if not client.call("checking the collection", "has_collection", name):
                raise FileNotFoundError(f"collection {loc} does not exist")
            desc = client.call("reading the collection", "describe_collection", name)
            State.from_properties(desc.get("properties") or {}, str(loc))
            client.call("dropping the collection", "drop_collection", name)
        finally:
            client.close()

    def close(self) -> None:
        """Give up the writer token and the connection. Unsaved rows stay on the server (see the module doc)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._token is not None and self._table.read_state().writer == self._token:
                self._put_state(self._state.updated_with(writer=None), check=False)
        except Exception:  # the server may be gone; a stale token only means the next writer takes over
            logger.debug("could not release the writer token of %s", self._loc, exc_info=True)
        finally:
            self._token = None
            self._client.close()

    def __enter__(self) -> MilvusCollection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Save when the block ends normally (flush, index, tune); close either way."""
        try:
            if exc_type is None and not self._read_only and not self._closed:
                self.save()
        finally:
            self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not getattr(self, "_closed", True):
                self._client.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"MilvusCollection({str(self._loc)!r}, dim={self.dim}, metric={self.metric!r}, index={self.index_spec!r})"

    # ================================================================ properties
    def __len__(self) -> int:
        self._check_open()
        return self._table.count()

    @property
    def dim(self) -> int:
        return self._state.dim

    @property
    def metric(self) -> str:
        return self._state.metric

    @property
    def fingerprint(self) -> str | None:
        return self._state.fingerprint

    @property
    def model_info(self) -> dict[str, Any] | None:
        """Where the model that filled the collection came from (as given to :meth:`create`), or None."""
        return dict(self._state.model_info) if isinstance(self._state.model_info, dict) else None

    @property
    def index_spec(self) -> str:
        """The factory string of the index built (``index_requested`` in :meth:`info` may be "auto")."""
        return self._state.index_spec

    @property
    def location(self) -> str:
        """The location, without secrets."""
        return str(self._loc)

    @property
    def path(self) -> str:
        """Same as :attr:`location` (local collections name their folder here)."""
        return str(self._loc)

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def params(self) -> dict[str, Any]:
        """Search parameters in use (``nprobe``, ``efSearch``, ``refine``) and how they were obtained."""
        return dict(self._state.params)

    def fields(self) -> list[str]:
        """Metadata field names items were added with (what ``where`` may filter on)."""
        return sorted(self._state.fields)

    def ids(self) -> np.ndarray:
        """All ids, ascending: int64 [count]."""
        self._check_open()
        parts = [
            np.fromiter((r["id"] for r in rows), dtype=np.int64) for rows in self._table.scan("", ["id"])
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def info(self) -> dict[str, Any]:
        """The recorded state plus live figures (count, index build progress, needs_rebuild)."""
        self._check_open()
        n = len(self)
        index = self._table.describe_index()
        reason = self._rebuild_reason(n)
        return {
            "path": str(self._loc),
            "location": str(self._loc),
            "backend": self._loc.kind,
            "server_version": self._client.server_version,
            "format_version": FORMAT_VERSION,
            "version": self._state.version,
            "count": n,
            "dim": self.dim,
            "metric": self.metric,
            "score": SCORE_CONVENTION[self.metric],
            "fingerprint": self.fingerprint,
            "model_info": self.model_info,
            "index_spec": self.index_spec,
            "index_requested": self._state.index_requested,
            "index_kind": self._index.kind,
            "milvus_index": {"index_type": self._index.index_type, "build": dict(self._index.build)},
            "index_rows": {
                k: index.get(k) for k in ("total_rows", "indexed_rows", "pending_index_rows", "state")
            },
            "params": self.params,
            "memory_budget": self._state.memory_budget,
            "recall_target": self._state.recall_target,
            "fields": self.fields(),
            "text_index": self._state.text_index,
            "next_id": self._state.next_id,
            "needs_rebuild": reason is not None,
            "rebuild_reason": reason,
            "read_only": self._read_only,
            "unsaved_changes": self._dirty,
            "consistency": "Session (reads see this handle's writes; others' within about a second)",
            "created": self._state.created,
            "updated": self._state.updated,
            "tuning_queries": [s["name"] for s in self._stored_queries()],
        }

    def commit_token(self) -> tuple[int, str]:
        """What changes whenever a writer saves this collection: (version, time of the last save), read
        from the server (a service polls it to know when to reopen)."""
        self._check_open()
        state = self._table.read_state()
        return state.version, state.updated

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Raise ``ValueError`` unless the collection was built with ``fingerprint`` (None on either side passes)."""
        check_fingerprint(
            self.fingerprint,
            fingerprint,
            what=f"collection {self._loc}",
            fix="search it with the model that made it, or re-embed the corpus with this model",
        )

    # ================================================================ add / remove / get
    def add(
        self, vectors: Any, metadata: Sequence[dict[str, Any] | None] | None = None, *, ids: Any = None
    ) -> np.ndarray:
        """Add vectors [n, d] with one metadata dict each; returns their ids (int64 [n]).

        Without ``ids`` the collection hands out new ones. With ``ids`` (int64 [n], unique, >= 0,
        none present in the collection) the rows keep those ids, as :func:`indexes.copy_collection`
        needs; they are written with an upsert, so re-sending a batch never doubles it.
        """
        self._check_open(write=True)
        vecs = self._as_vectors(vectors, "vectors", allow_1d=False)  # [n, d]
        n = vecs.shape[0]
        metas = [json.loads(text) for text in validate_metadata(metadata, n)]
        if ids is None:
            if self._state.next_id + n - 1 > MAX_ID:
                raise ValueError(
                    f"no ids left in collection {self._loc}: ids are never reused and the next one is "
                    f"{self._state.next_id}, the largest is {MAX_ID}; copy the items into a new collection"
                )
            new = np.arange(self._state.next_id, self._state.next_id + n, dtype=np.int64)
        else:
            new = as_ids(ids)
            if new.size != n:
                raise ValueError(
                    f"ids has {new.size} entries but {n} vectors were given: pass one id per vector"
                )
            if np.unique(new).size != n:
                raise ValueError("ids contains duplicates: each item needs its own id")
            if n and new.min() < 0:
                raise ValueError(f"ids must be >= 0, received {int(new.min())}")
            if n and new.max() > MAX_ID:
                raise ValueError(
                    f"ids must be at most {MAX_ID} (the id after the last must fit in int64), "
                    f"received {new[new > MAX_ID][:3].tolist()}"
                )
            present = self._table.existing(new)
            if present.size:
                raise ValueError(
                    f"cannot add: {present.size} id(s) already in collection {self._loc}, e.g. "
                    f"{present[:5].tolist()}; remove them first or leave them out"
                )
        if n == 0:
            return new
        seen = set(self._state.fields)
        for meta in metas:
            seen.update(meta)
        next_id = max(self._state.next_id, int(new.max()) + 1)
        # reserve the ids (and record the fields) before the rows exist: an id is never handed out twice
        self._put_state(self._state.updated_with(next_id=next_id, fields=tuple(sorted(seen))))
        self._table.write(new, vecs, metas, upsert=ids is not None)
        self._dirty = True
        return new

    def reserve_ids(self, next_id: int) -> None:
        """Never hand out ids below ``next_id`` from now on (copies use it to keep the source's id space)."""
        self._check_open(write=True)
        next_id = check_int("next_id", next_id, 0)
        if next_id > MAX_ID + 1:
            raise ValueError(f"next_id must be at most {MAX_ID + 1} (ids are int64), received {next_id}")
        if next_id > self._state.next_id:
            self._put_state(self._state.updated_with(next_id=next_id))

    def remove(self, ids: Any) -> None:
        """Remove items by id (all must exist, or nothing is removed)."""
        self._check_open(write=True)
        ids = np.unique(as_ids(ids))
        if ids.size == 0:
            return
        present = self._table.existing(ids)
        if present.size != ids.size:
            unknown = np.setdiff1d(ids, present)
            raise ValueError(
                f"cannot remove: {unknown.size} unknown or removed id(s) {unknown[:5].tolist()}"
                f"{' ...' if unknown.size > 5 else ''}; valid ids come from add() or ids()"
            )
        self._table.delete(ids)
        self._dirty = True

    def get(self, ids: Any) -> list[dict[str, Any]]:
        """Metadata dict of each id, in order (new dicts: editing them changes nothing stored)."""
        self._check_open()
        ids = as_ids(ids)
        rows = self._table.fetch(ids, ["id", "meta"], "get metadata")
        return [dict(rows[int(i)]["meta"] or {}) for i in ids]

    def vectors(self, ids: Any) -> np.ndarray:
        """The exact stored vectors of ``ids``: float32 [n, d]."""
        self._check_open()
        ids = as_ids(ids)
        if ids.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        rows = self._table.fetch(ids, ["id", "vector"], "get vectors")
        return np.stack([np.asarray(rows[int(i)]["vector"], dtype=np.float32) for i in ids])

    # ================================================================ search
    def search(
        self, queries: Any, k: int, where: dict[str, Any] | None = None, refine: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query: (scores float32 [n, k], ids int64 [n, k]), best first.

        ``queries`` is [n, d] or [d]. ``where`` filters metadata inside the search (see
        :mod:`indexes.milvus.expr`); k ids come back whenever k items match. ``refine=r`` takes
        ``r * k`` candidates and rescores them exactly with the stored vectors (default: the tuned
        value). Rows are padded with id -1 / score -inf when fewer than k items qualify.
        """
        self._check_open()
        q = self._as_vectors(queries, "queries", allow_1d=True)  # [n, d]
        k = check_int("k", k, 1)
        if k > MAX_TOPK:
            raise ValueError(f"k={k} exceeds Milvus's limit of {MAX_TOPK} results per query; ask for fewer")
        refine = check_int("refine", refine, 1) if refine is not None else int(self.params.get("refine", 0))
        expr = ""
        if where is not None and not (isinstance(where, dict) and not where):  # {} filters nothing out
            compiled = self._compile(where)
            if compiled is None:  # e.g. an empty 'in' list
                return exact.padded(q.shape[0], k)
            expr = compiled
        scores, ids = self._ann(q, k, expr, self.params, refine)
        return self._fill_short(q, k, scores, ids, expr)

    def _ann(
        self, q: np.ndarray, k: int, expr: str, params: dict[str, Any], refine: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Milvus search with search parameters from ``params``; ``refine`` rescores ``refine * k`` candidates."""
        kk = min(k * refine, MAX_TOPK) if refine else k
        scores, ids = self._table.search(q, kk, expr, kinds.search_params(self._index, params, kk))  # [n, kk]
        if refine:
            scores, ids = self._table.rescore(q, ids, k)
        return scores, ids

    def _fill_short(
        self, q: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray, expr: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows with fewer than min(k, matching items) hits are answered again: with the widest search
        parameters when many items match (more than ``limits.exact_fill_max``), and exactly when few do
        or when the widest search still comes back short."""
        found = (ids >= 0).sum(axis=1)
        if (found >= k).all():
            return scores, ids
        matches = self._table.count(expr)
        short = np.flatnonzero(found < min(k, matches))
        if short.size and matches > self._limits.exact_fill_max and self._index.kind != "flat":
            widest = {"efSearch": 1_024} if self._index.kind == "hnsw" else {"nprobe": self._index.nlist}
            s, i = self._table.search(q[short], k, expr, kinds.search_params(self._index, widest, k))
            scores[short], ids[short] = s, i
            short = short[(i >= 0).sum(axis=1) < min(k, matches)]  # still short (removed rows, unindexed...)
        if short.size:
            scores[short], ids[short] = self._table.exact(q[short], k, expr)
        return scores, ids

    # ================================================================ save / index / tune
    def save(self) -> None:
        """Flush the rows to durable segments, rebuild the index if ``auto`` calls for another kind,
        tune search parameters when the count has doubled, and record the state (the commit point)."""
        self._check_open(write=True)
        if self._dirty:
            self._table.flush()
        n = len(self)
        if self._rebuild_reason(n) is not None:
            self.rebuild()
        elif self._should_tune(n):
            self.wait_for_index()
            self.tune()
        self._put_state(self._state.updated_with(version=self._state.version + 1))
        self._dirty = False

    # ================================================================ internals
    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise ValueError(f"collection {self._loc} is closed; open it again")
        if write and self._read_only:
            raise ValueError(
                f"collection {self._loc} was opened read-only: reopen it with read_only=False to modify it"
            )

    def _as_vectors(self, x: Any, what: str, allow_1d: bool) -> np.ndarray:
        return as_vectors(x, what, self.dim, str(self._loc), self.fingerprint, allow_1d)

    def _compile(self, where: Any) -> str | None:
        try:
            return compile_where(where, list(self._state.fields))
        except ValueError as exc:
            if not str(exc).startswith("unknown filter field"):
                raise
            fresh = self._table.read_state()  # another handle may have added items with that field since
            if set(fresh.fields) == set(self._state.fields):
                raise
            self._state = self._state.updated_with(fields=fresh.fields)
            return compile_where(where, list(self._state.fields))

    def _put_state(self, state: State, check: bool = True) -> None:
        """Record ``state`` on the server; with ``check``, first make sure this handle still holds the writer token."""
        if check and self._token is not None and self._table.read_state().writer != self._token:
            raise CollectionBusyError(
                f"collection {self._loc} was opened for writing by another handle after this one "
                "(one writer at a time): close this handle and reopen the collection to continue"
            )
        state = state.updated_with(updated=now())
        self._table.put_state(state)
        self._state = state
