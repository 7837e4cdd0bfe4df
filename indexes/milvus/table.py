"""The rows of one Milvus collection (``id``, ``vector``, ``meta``) and every request a MilvusCollection makes on them.

Reads use Session consistency (this process's writes are visible, no wait otherwise);
:meth:`Table.sync` waits once for everything written before it (Strong). Reading everything
follows Milvus's query-iterator protocol: pages of ``id > last`` with the iterator flags, which
make each page the smallest ids left; a short page is not the end (servers may stop a page at
a segment's end), an empty one is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from indexes import exact
from indexes.milvus.arrays import hits_to_arrays, merge_topk
from indexes.milvus.client import Client
from indexes.milvus.kinds import MilvusIndex
from indexes.milvus.state import QUERIES_KEY, State

__all__ = ["METRICS", "Table"]

METRICS = {"ip": "IP", "l2": "L2"}
SEARCH_CELLS = 1 << 18  # queries * k per search request
_READ = {"consistency_level": "Session"}


class Table:
    """Requests on the Milvus collection ``name`` reached through ``client``; ``where`` names it in errors."""

    def __init__(self, client: Client, name: str, where: str, metric: str, request_rows: int = 4_096) -> None:
        self.client = client
        self.name = name
        self.where = where
        self.metric = metric
        self.batch = int(request_rows)  # rows per write, read or delete request (Limits.request_rows)
        self.text: Any = None  # the collection's TextIndex: each row written gets its text column

    # ----- rows -----------------------------------------------------------------------------
    def count(self, expr: str = "") -> int:
        rows = self.client.call(
            "counting items", "query", self.name, filter=expr, output_fields=["count(*)"], **_READ
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def sync(self) -> None:
        """Wait until the server has applied every write made before now (by anyone)."""
        self.client.call(
            "synchronising",
            "query",
            self.name,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )

    def scan(self, expr: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every row matching ``expr``, in pages of ascending id."""
        last = -1
        while True:
            cond = f"id > {last}" + (f" and ({expr})" if expr else "")
            rows = self.client.call(
                "reading rows",
                "query",
                self.name,
                filter=cond,
                output_fields=fields,
                limit=2 * self.batch,
                iterator="True",
                reduce_stop_for_best="True",
                strict_float32=True,
                **_READ,
            )
            if not rows:
                return
            yield rows
            last = max(int(r["id"]) for r in rows)

    def next_free_id(self, recorded: int) -> int:
        """``recorded``, or one past the largest id stored at or above it (rows the state does not know of)."""
        top = recorded - 1
        for rows in self.scan(f"id >= {int(recorded)}", ["id"]):
            top = max(top, max(int(r["id"]) for r in rows))
        return top + 1

    def fetch(
        self, ids: np.ndarray, fields: list[str], what: str, missing_ok: bool = False
    ) -> dict[int, Any]:
        """Rows of ``ids`` by id; unknown ids raise ``ValueError`` (worded like the local collection's)."""
        unique = np.unique(ids)
        rows: dict[int, Any] = {}
        for lo in range(0, unique.size, self.batch):
            chunk = unique[lo : lo + self.batch].tolist()
            result = self.client.call(
                what,
                "query",
                self.name,
                filter=f"id in [{','.join(map(str, chunk))}]",
                output_fields=fields,
                strict_float32=True,
                **_READ,
            )
            rows.update((int(r["id"]), r) for r in result)
        if not missing_ok and len(rows) < unique.size:
            unknown = np.array([i for i in unique.tolist() if i not in rows], dtype=np.int64)
            raise ValueError(
                f"cannot {what}: {unknown.size} unknown or removed id(s) {unknown[:5].tolist()}"
                f"{' ...' if unknown.size > 5 else ''}; valid ids come from add() or ids()"
            )
        return rows

    def existing(self, ids: np.ndarray) -> np.ndarray:
        """The sorted subset of ``ids`` present in the collection."""
        return np.array(sorted(self.fetch(ids, ["id"], "check ids", missing_ok=True)), dtype=np.int64)

    def write(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict[str, Any]], upsert: bool) -> None:
        """Insert (or upsert: replacing rows with the same ids) ``vectors`` [n, d] under ``ids``."""
        method = "upsert" if upsert else "insert"
        for lo in range(0, ids.size, self.batch):
            hi = min(ids.size, lo + self.batch)
            rows = [{"id": int(ids[j]), "vector": vectors[j], "meta": metas[j]} for j in range(lo, hi)]
            if self.text is not None:
                from indexes.milvus.text import row_text

                for row in rows:
                    row["text"] = row_text(row["meta"], self.text)
            self.client.call(f"writing rows {lo}..{hi}", method, self.name, rows)

    def delete(self, ids: np.ndarray) -> None:
        for lo in range(0, ids.size, self.batch):
            self.client.call("removing rows", "delete", self.name, ids=ids[lo : lo + self.batch].tolist())

    def flush(self) -> None:
        self.client.call("flushing", "flush", self.name)

    # ----- search -----------------------------------------------------------------------------
    def search(
        self, q: np.ndarray, k: int, expr: str, params: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Milvus search of ``q`` [n, d] -> (scores [n, k], ids [n, k]), higher is better, in request-sized blocks."""
        out_s, out_i = exact.padded(q.shape[0], k)
        step = max(1, min(1_024, SEARCH_CELLS // k))
        for lo in range(0, q.shape[0], step):
            result = self.client.call(
                "searching",
                "search",
                self.name,
                data=list(q[lo : lo + step]),
                limit=k,
                filter=expr,
                output_fields=["id"],
                search_params={"metric_type": METRICS[self.metric], "params": params},
                **_READ,
            )
            out_s[lo : lo + step], out_i[lo : lo + step] = hits_to_arrays(result, k, self.metric)
        return out_s, out_i

    def search_text(self, texts: list[str], k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        """Milvus BM25 search of folded query texts -> (scores [n, k], ids [n, k]), higher is better."""
        out_s, out_i = exact.padded(len(texts), k)
        step = max(1, min(1_024, SEARCH_CELLS // k))
        for lo in range(0, len(texts), step):
            batch = texts[lo : lo + step]
            live = [i for i, t in enumerate(batch) if t.strip()]  # Milvus refuses an empty text
            if not live:
                continue
            result = self.client.call(
                "searching text",
                "search",
                self.name,
                data=[batch[i] for i in live],
                anns_field="text_sparse",
                limit=k,
                filter=expr,
                output_fields=["id"],
                search_params={"metric_type": "BM25"},
                **_READ,
            )
            scores, ids = hits_to_arrays(result, k, "ip")
            if self.client.lite:  # Milvus Lite reports BM25 as a distance (lower is better)
                scores = np.where(ids >= 0, -scores, -np.inf).astype(np.float32)
            rows = np.asarray(live) + lo
            out_s[rows], out_i[rows] = scores, ids
        return out_s, out_i

    def exact(self, q: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over every stored vector matching ``expr``, streamed from the server."""
        scores, ids = exact.padded(q.shape[0], k)
        for rows in self.scan(expr, ["id", "vector"]):
            base = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in rows])  # [b, d]
            base_ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
            s, i = exact.knn(q, base, base_ids, k, self.metric)  # [n, k]
            scores, ids = merge_topk(scores, ids, s, i, k)
        return scores, ids

    def rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ids [n, c] from the stored vectors; best k per row."""
        rows = self.fetch(np.unique(cand[cand >= 0]), ["id", "vector"], "rescore candidates", missing_ok=True)
        if not rows:
            return exact.padded(q.shape[0], k)
        have = np.array(sorted(rows), dtype=np.int64)  # [u]
        vecs = np.stack([np.asarray(rows[int(i)]["vector"], dtype=np.float32) for i in have])  # [u, d]
        pos = np.searchsorted(have, cand).clip(0, have.size - 1)  # [n, c]
        valid = (cand >= 0) & (have[pos] == cand)
        cand = np.where(valid, cand, -1)
        return exact.rescore(q, cand, vecs[pos], k, self.metric)  # vecs[pos]: [n, c, d]

    # ----- index and load state ----------------------------------------------------------------
    def describe_index(self) -> dict[str, Any]:
        return dict(self.client.call("reading the index", "describe_index", self.name, "vector") or {})

    def wait_for_index(self, index_type: str, timeout: float) -> float:
        """Wait until Milvus has indexed every flushed row; returns the seconds waited."""
        t0 = time.perf_counter()
        while True:
            desc = self.describe_index()
            state = str(desc.get("state", "Finished"))
            if state == "Failed":
                raise RuntimeError(
                    f"Milvus at {self.where} failed to build the {index_type} index: "
                    f"{desc.get('index_state_fail_reason') or desc}"
                )
            if int(desc.get("pending_index_rows") or 0) == 0 and state == "Finished":
                return time.perf_counter() - t0
            waited = time.perf_counter() - t0
            if waited > timeout:
                raise TimeoutError(
                    f"Milvus at {self.where} has not finished building the {index_type} index after "
                    f"{timeout:g} s ({desc}); check the server's index nodes, then call save() again"
                )
            time.sleep(min(0.5, 0.02 + waited / 4))

    def create_index(self, index: MilvusIndex, timeout: float) -> None:
        params = self.client.index_params(index.index_type, METRICS[self.metric], index.build)
        self.client.call("building the index", "create_index", self.name, params, sync=False)
        self.wait_for_index(index.index_type, timeout)

    def replace_index(self, old: MilvusIndex, new: MilvusIndex, timeout: float) -> None:
        """Release, drop the index, build ``new`` (``old`` again if that fails), load."""
        self.client.call("releasing the collection", "release_collection", self.name)
        try:
            self.client.call("dropping the index", "drop_index", self.name, "vector")
            try:
                self.create_index(new, timeout)
            except BaseException:
                self.create_index(old, timeout)
                raise
        finally:
            self.client.call("loading the collection", "load_collection", self.name)

    def ensure_loaded(self) -> None:
        state = self.client.call("reading the load state", "get_load_state", self.name)
        name = getattr(state.get("state"), "name", str(state.get("state")))
        if name != "Loaded":
            self.client.call("loading the collection", "load_collection", self.name)

    # ----- recorded state ------------------------------------------------------------------------
    def read_state(self) -> State:
        desc = self.client.call("reading the collection", "describe_collection", self.name)
        return State.from_properties(desc.get("properties") or {}, self.where)

    def put_state(self, state: State) -> None:
        self.client.call(
            "recording the collection state",
            "alter_collection_properties",
            self.name,
            properties=state.to_properties(),
        )

    def read_queries(self) -> str | None:
        """The stored tuning query sets (JSON text), or None."""
        desc = self.client.call("reading the collection", "describe_collection", self.name)
        text = (desc.get("properties") or {}).get(QUERIES_KEY)
        return text if text and text != "null" else None

    def put_queries(self, text: str | None) -> None:
        self.client.call(
            "recording the tuning queries",
            "alter_collection_properties",
            self.name,
            properties={QUERIES_KEY: text if text is not None else "null"},
        )
