"""The text index of a Milvus collection: Milvus's BM25 full-text search over the chosen metadata fields.

A collection created with ``text_fields`` gets two more columns (Milvus 2.5+ and Milvus Lite 2.5+):
``text`` (VARCHAR with an analyzer: the text of the chosen fields, :func:`indexes.lexical.field_text`,
one field per line) and ``text_sparse`` (its BM25 term vector, made by Milvus's ``BM25`` function,
searched with the ``BM25`` metric). Both the stored text and the queries are folded here first (NFKD,
combining marks removed, lower case), so "Café" and "cafe" are one word on every Milvus, as with the
local collections' ``unicode61 remove_diacritics 2``; Milvus's ``standard`` analyzer then splits the
words. ``stemming="porter"`` adds Milvus's English ``stemmer`` filter, which Milvus Lite lacks.

Differences from the local text index, each refused with a clear error rather than answered
differently: the fields are searched together (``search_text(fields=...)`` must name all of them or
none), they are declared when the collection is created (``set_text_fields`` cannot change them:
copy into a new collection), and BM25's statistics are Milvus's (per segment on Milvus Lite), so
scores are not those of the local collection. Fusion happens in :mod:`retrieval.search.hybrid`, the
same for every backend; Milvus's own ``hybrid_search`` with ``RRFRanker(k)`` computes the same
reciprocal rank fusion (a test compares them).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexes.lexical.config import TextIndex, field_text, text_index_of
from indexes.lexical.searching import as_text_queries

__all__ = ["MIN_VERSION", "MilvusText", "add_text_fields", "fold", "row_text", "text_support"]

MIN_VERSION = (2, 5)  # Milvus (server and Lite) with BM25 full-text search
MAX_TEXT_CHARS = 16_000  # the text column of a row is cut here (the VARCHAR holds 65,535 bytes)
TEXT, SPARSE = "text", "text_sparse"


def fold(text: str) -> str:
    """Diacritics removed, lower case: what the local tokenizer's ``remove_diacritics 2`` does to words."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()


def row_text(meta: dict[str, Any], config: TextIndex) -> str:
    """The folded text of an item's indexed fields (one per line), at most :data:`MAX_TEXT_CHARS`."""
    return fold("\n".join(field_text(meta.get(name)) for name in config.fields))[:MAX_TEXT_CHARS]


def _version(text: str) -> tuple[int, ...]:
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(x) for x in found.groups() if x is not None) if found else ()


def text_support(client: Any, config: TextIndex) -> None:
    """Raise ``ValueError`` naming the version when this Milvus cannot hold ``config``."""
    reported = str(client.call("reading the server version", "get_server_version"))
    version = _version(reported)
    what = "Milvus Lite" if client.lite else "the Milvus server"
    if version and version[:2] < MIN_VERSION:
        raise ValueError(
            f"{what} at {client.location} is version {reported}: text fields need BM25 full-text search, "
            f"which Milvus has from {'.'.join(map(str, MIN_VERSION))}: upgrade Milvus (pip install -U "
            "milvus-lite, or a newer server), or keep the collection in a local folder"
        )
    if config.stemming == "porter" and client.lite:
        raise ValueError(
            f"Milvus Lite ({reported}) has no stemming analyzer: create the collection with stemming='none', "
            "or use a Milvus server or a local folder"
        )


def add_text_fields(schema: Any, client: Any, config: TextIndex) -> None:
    """The ``text`` and ``text_sparse`` columns and the BM25 function between them."""
    import pymilvus

    analyzer: dict[str, Any] = {"tokenizer": "standard"}
    if config.stemming == "porter":
        analyzer["filter"] = ["lowercase", {"type": "stemmer", "language": "english"}]
    schema.add_field(
        TEXT, client.DataType.VARCHAR, max_length=65_535, enable_analyzer=True, analyzer_params=analyzer
    )
    schema.add_field(SPARSE, client.DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        pymilvus.Function(
            name="bm25",
            function_type=pymilvus.FunctionType.BM25,
            input_field_names=[TEXT],
            output_field_names=[SPARSE],
        )
    )


def create_text_index(client: Any, name: str) -> None:
    params = client._client.prepare_index_params()
    params.add_index(
        field_name=SPARSE, index_name=SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
    )
    client.call("building the text index", "create_index", name, params)


class MilvusText:
    """``text_fields`` / ``search_text`` / ``set_text_fields`` of a MilvusCollection (a base of it)."""

    _state: Any
    _table: Any
    _loc: Any

    @property
    def text_index(self) -> TextIndex | None:
        record = getattr(self._state, "text_index", None)
        return TextIndex.from_dict(record) if record else None

    @property
    def text_fields(self) -> list[str]:
        config = self.text_index
        return list(config.fields) if config else []

    def set_text_fields(
        self, text_fields: Sequence[str] | TextIndex | None, stemming: str | None = None
    ) -> None:
        """A no-op when the collection already has this text index; otherwise ``ValueError``: on Milvus the
        text fields are part of the schema, chosen when the collection is created."""
        self._check_open(write=True)  # type: ignore[attr-defined]
        wanted = text_index_of(text_fields, stemming)
        if wanted == self.text_index:
            return
        raise ValueError(
            f"collection {self._loc} has text fields {self.text_fields or 'none'}; on Milvus they are chosen "
            f"when the collection is created: create a new one with text_fields={list(wanted.fields) if wanted else None} "
            "and copy the items into it (`retrieval copy SRC DST`), or keep the collection in a local folder"
        )

    def search_text(
        self,
        queries: str | Sequence[str],
        k: int,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by Milvus's BM25 (scores float32 [n, k], ids int64 [n, k]; -1 / -inf padding), as
        :meth:`indexes.Collection.search_text`; ``fields`` must be None or every text field."""
        from indexes.milvus.arrays import check_int

        self._check_open()  # type: ignore[attr-defined]
        config = self.text_index
        if config is None:
            raise ValueError(
                f"collection {self._loc} has no text index: on Milvus, create the collection with "
                "text_fields=[...] (`retrieval embed ... --text-fields title,tags`)"
            )
        texts = as_text_queries(queries)
        k = check_int("k", k, 1)
        if fields is not None:
            config.field_positions(fields)  # unknown fields named first
            if sorted(set([fields] if isinstance(fields, str) else fields)) != sorted(config.fields):
                raise ValueError(
                    f"a Milvus collection searches its text fields {list(config.fields)} together: search "
                    "them all (fields=None), or keep the collection in a local folder to search some"
                )
        expr = ""
        if where is not None and not (isinstance(where, dict) and not where):
            compiled = self._compile(where)  # type: ignore[attr-defined]
            if compiled is None:  # matches nothing (an empty 'in' list)
                return np.full((len(texts), k), -np.inf, np.float32), np.full((len(texts), k), -1, np.int64)
            expr = compiled
        return self._table.search_text([fold(t) for t in texts], k, expr)
