"""The Searcher: queries encoded by a twin encoder, answered by the collection it embedded.

A :class:`Searcher` pairs a model with the :class:`indexes.Collection` it embedded. Every
method encodes its queries, asks the collection for the ``k`` best items of the wanted
modality (the ``modality`` metadata field, merged with any ``where=`` filter) and returns
:class:`Hit` objects, best first. Single-query methods return ``list[Hit]``; their
``*_batch`` twins take a sequence and return ``list[list[Hit]]``.

``refine=r`` asks the index for ``r * k`` candidates and re-scores them exactly with the
stored vectors (useful with compressed indexes such as IVF-PQ). Composed queries add an
image query and a text query (``(1 - w) * image + w * text``, renormalised), e.g. a photo
plus "in red", in the spirit of the vector-arithmetic queries of Kiros et al. 2014
("Unifying visual-semantic embeddings with multimodal neural language models").

Example::

    searcher = Searcher(TwinEncoder.load("model/"), Collection.open("photos.coll"))
    for hit in searcher.text_to_image("a red bicycle", k=5, where={"split": "test"}):
        print(hit.score, hit.metadata["path"])
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from indexes.fingerprint import check_fingerprint
from retrieval import encoding
from retrieval.pretrained import describe_model_info
from retrieval.search.expansion import OTHER_MODALITY, Expansion, expand_with, expansion_pairs
from retrieval.search.hubness import Hubness, QueryBank, query_bank_path, rerank
from retrieval.search.hybrid import Hybrid, hybrid_search
from retrieval.search.penalties import PenaltyTable, penalty_table_path
from retrieval.search.queries import ImageQuery, as_query_vectors, load_query_image, one_text

__all__ = ["Hit", "Searcher"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: the item's collection id, its score (higher is better) and metadata.

    ``score`` is what the hits are ordered by: the cosine similarity of query and item, unless the
    searcher corrects hubness (then the corrected score, ``cosine - penalty``, which may be
    negative; see :mod:`retrieval.search.hubness`) or re-ranks (then the match probability of the
    re-ranked hits). ``cosine`` is always the plain similarity from the index, so both can be shown.
    Hybrid searches (:mod:`retrieval.search.hybrid`) score by the fusion and keep the item's BM25
    score in ``lexical`` when the lexical arm found it.
    """

    id: int
    score: float
    metadata: dict[str, Any]
    cosine: float | None = None  # the index similarity (== score when nothing corrects it)
    lexical: float | None = None  # BM25 score of a hybrid search's lexical arm (None: not found by it)


class Searcher:
    """Search ``collection`` with queries encoded by ``model``.

    ``collection`` is an open collection (:class:`indexes.Collection`, a Milvus collection) or the
    location of one: a folder, ``milvus://HOST:PORT/NAME`` or ``milvus-lite://PATH.db/NAME``
    (opened read-only with :func:`indexes.open_collection` and closed by :meth:`close`). ``model`` may be ``None`` for raw-vector search only. A model
    whose fingerprint differs from the one the collection records raises ``ValueError``.

    Items are told apart by their ``modality`` metadata field (as :func:`retrieval.embed.embed_corpus`
    writes it). A collection without that field is searched whole; one holding a single modality
    is searched without a filter (faster), so items added there without the field also come back.

    Queries are encoded through :mod:`retrieval.encoding`: a model in eval mode (``model.eval()``)
    is used as it is, which is safe from several threads; a model in train mode is switched to
    eval mode and back around every call. ``device`` encodes there (the model moves for each
    call and back); leave it ``None`` to encode where the model is.

    ``hubness`` (a :class:`~retrieval.search.hubness.Hubness`) corrects hubness at query time:
    each text or image query asks for ``hubness.candidates`` dense candidates, re-ranked by
    query-bank normalisation with ``query_bank`` (default: the bank stored beside the
    collection, :func:`~retrieval.search.hubness.query_bank_path`). Hit scores are then the
    corrected scores, each hit keeping its cosine beside (:class:`Hit`); :meth:`scoring` names
    what the scores are. Raw-vector searches are corrected when given ``query_modality``.

    ``expansion`` (a :class:`~retrieval.search.expansion.Expansion`) moves each text query searching
    images, and each image query searching captions, towards the partners of its nearest pairs in
    the query bank (the same bank, which must record its pairs; :mod:`retrieval.search.expansion`)
    before the index is asked (the dense arm of hybrid searches too): cosines are then the expanded
    query's. Same-modality searches (image->image, text->text) are not expanded, nor are searches
    over both modalities at once (``modality=None`` on a collection holding both); on a collection
    holding one modality, ``modality=None`` searches that one.

    ``rerank=N`` re-orders the best ``N`` dense (or hubness-corrected) candidates of each text or
    image query by the model's match head (:meth:`retrieval.model.TwinEncoder.match`), reading
    the candidates' stored vectors: two-stage retrieval. Re-ranked hits carry the match
    probability as their score; hits past ``N`` keep their dense score. The set of the best
    ``max(N, k)`` candidates never changes, only its order.

    ``hybrid`` (a :class:`~retrieval.search.hybrid.Hybrid`) answers text queries (text->image,
    text->text) by the dense arm above and BM25 over the items' indexed text fields, fused (RRF by
    default); ``Hybrid(fusion="lexical")`` searches words alone and needs no model. The collection
    needs a text index (``text_fields``). :meth:`search_hybrid` takes queries already encoded.
    """

    def __init__(
        self,
        model: Any,
        collection: Any,
        *,
        device: str | None = None,
        hubness: Hubness | None = None,
        query_bank: QueryBank | None = None,
        rerank: int = 0,
        hybrid: Hybrid | None = None,
        expansion: Expansion | None = None,
    ) -> None:
        self._owns = isinstance(collection, (str, os.PathLike))
        if self._owns:
            from indexes import open_collection

            collection = open_collection(collection, read_only=True)
        self.model = model
        self.collection = collection
        self.device = device
        try:
            self._check_model()
        except Exception:
            self.close()
            raise
        self.hubness = hubness
        self.query_bank = query_bank
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            self.close()
            raise ValueError(f"rerank must be an int >= 0 (0: no re-ranking); received {rerank!r}")
        self.rerank = int(rerank)
        if self.rerank and getattr(model, "match_head", None) is None:
            self.close()
            raise ValueError(
                "rerank needs a model with a match head (retrieval.match.train_match_head, then "
                "model.attach_match_head or a head saved beside the model)"
            )
        self.expansion = expansion
        if (hubness is not None or expansion is not None) and query_bank is None:
            try:
                self.query_bank = QueryBank.load(query_bank_path(collection.path))
            except Exception:
                self.close()
                raise
        self._expansion_pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # query modality -> keys, values
        if expansion is not None:
            try:  # a bank without pairs, or of another width, fails here, not at the first query
                self._expansion_pairs = {m: expansion_pairs(self.query_bank, m) for m in ("text", "image")}
                width = self._expansion_pairs["text"][0].shape[1]
                if width != int(collection.dim):
                    raise ValueError(
                        f"the query bank holds {width}-d vectors, collection {collection.path} {collection.dim}-d: "
                        "rebuild the bank with the model that built the collection"
                    )
            except Exception:
                self.close()
                raise
        if self.query_bank is not None and self.query_bank.fingerprint and collection.fingerprint:
            check_fingerprint(
                collection.fingerprint,
                self.query_bank.fingerprint,
                what=f"the query bank of collection {collection.path}",
                fix="rebuild the query bank with the model that built the collection",
            )
        self._has_modality = "modality" in set(collection.fields())
        self._single: tuple[int, str | None] = (-1, None)  # (collection size, its only modality)
        self._tables: dict[str, PenaltyTable] = {}  # query modality -> hub penalties of the items
        try:
            self.hybrid = self._check_hybrid(hybrid)
        except Exception:
            self.close()
            raise

    def _check_hybrid(self, hybrid: Hybrid | None) -> Hybrid | None:
        """``hybrid`` when the collection can answer it (a text index holding its fields), else ValueError."""
        if hybrid is None:
            return None
        if not isinstance(hybrid, Hybrid):
            raise TypeError(
                f"hybrid must be a retrieval.search.Hybrid or None; received {type(hybrid).__name__}"
            )
        indexed = list(getattr(self.collection, "text_fields", None) or [])
        missing = sorted(set(hybrid.fields or ()) - set(indexed))
        if not indexed or missing:
            raise ValueError(
                f"collection {self.collection.path} "
                + (f"indexes the text of {indexed}, not {missing}" if indexed else "has no text index")
                + ": declare the fields to search (`retrieval text-index COLL title,tags`, "
                "Collection.set_text_fields) or search the indexed ones"
            )
        return hybrid

    def _check_model(self) -> None:
        if self.model is None:
            return
        made_by = describe_model_info(getattr(self.collection, "model_info", None))
        check_fingerprint(
            self.collection.fingerprint,
            str(self.model.fingerprint()),
            what=f"collection {self.collection.path}",
            fix=f"search with the model that built the collection{f' ({made_by})' if made_by else ''}, "
            "or re-embed the corpus",
        )
        if int(self.model.embed_dim) != int(self.collection.dim):
            raise ValueError(
                f"model embeds in dim {self.model.embed_dim}, collection {self.collection.path} has dim "
                f"{self.collection.dim}: use the model that built the collection"
            )

    def close(self) -> None:
        """Store the hub penalties computed meanwhile (beside a local collection's query bank), and
        close the collection when this searcher opened it."""
        if getattr(self, "_tables", None):
            self._store_tables()
        if self._owns:
            self.collection.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ---------------------------------------------------------------------------
    def _need_model(self) -> Any:
        if self.model is None:
            raise ValueError("this Searcher has no model: pass one to encode text or image queries")
        return self.model

    def encode_texts(self, queries: Sequence[str]) -> np.ndarray:
        """[n, D] float32 unit vectors for text queries."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError(f"text queries must be a sequence of str; received {type(queries).__name__}")
        for q in queries:
            if not isinstance(q, str):
                raise TypeError(f"a text query must be a str; received {type(q).__name__} ({q!r:.60})")
            if not q.strip():
                raise ValueError("a text query is empty: give some words to search for")
        if not queries:
            return np.zeros((0, int(self.collection.dim)), dtype=np.float32)
        vectors = encoding.encode_texts(self._need_model(), list(queries), device=self.device).vectors
        return as_query_vectors(vectors, self.collection.dim)

    def encode_images(self, images: Sequence[ImageQuery]) -> np.ndarray:
        """[n, D] float32 unit vectors for image queries (PIL images or paths)."""
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError(
                f"image queries must be a sequence of images or paths; received {type(images).__name__}"
            )
        decoded = [load_query_image(image) for image in images]
        if not decoded:
            return np.zeros((0, int(self.collection.dim)), dtype=np.float32)
        vectors = encoding.encode_images(self._need_model(), decoded, device=self.device).vectors
        return as_query_vectors(vectors, self.collection.dim)

    # -- raw vectors --------------------------------------------------------------------------
    def search_vector(
        self,
        vector: Any,
        k: int = 10,
        *,
        modality: str | None = None,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[Hit]:
        """Hits for one raw query vector [D] (normalised here); ``modality`` "image" / "text" / None (all)."""
        array = np.asarray(vector)
        if array.ndim != 1 or array.shape[0] != self.collection.dim:
            raise ValueError(
                f"search_vector takes one vector of shape [{self.collection.dim}]; received shape {array.shape}"
            )
        return self.search_vectors(array[None, :], k, modality=modality, where=where, refine=refine)[0]

    def search_vectors(
        self,
        vectors: Any,
        k: int = 10,
        *,
        modality: str | None = None,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
        query_modality: str | None = None,
    ) -> list[list[Hit]]:
        """Hits for each row of raw query vectors [n, D] (rows normalised here).

        ``query_modality`` ("text" / "image") says what the vectors encode; with it, a searcher
        built with ``hubness`` re-ranks the dense candidates (class docstring).
        """
        queries = as_query_vectors(vectors, self.collection.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int; received {k!r}")
        if refine is not None and (
            isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 1
        ):
            raise ValueError(
                f"refine must be a positive int (candidates per result) or None; received {refine!r}"
            )
        if len(queries) == 0:
            return []
        asked = queries  # the match head scores the query as encoded, expanded or not
        if self.expansion is not None and query_modality in OTHER_MODALITY:
            target = modality if modality is not None else (self._only_modality() if self._has_modality else None)
            if target == OTHER_MODALITY[query_modality]:  # cross-modal: a mixed search (modality None) is not expanded
                queries = expand_with(queries, *self._expansion_pairs[query_modality], self.expansion)
        filters = self._filters(modality, where)
        if self.scoring(query_modality) == "cosine":
            scores, ids = self.collection.search(queries, int(k), where=filters, refine=refine)  # [n, k]
            return self._hits(scores, ids, scores)
        keep = max(int(k), self.rerank)
        wide = max(keep, int(self.hubness.candidates) if self.hubness is not None else 0)
        dense_scores, dense_ids = self.collection.search(
            queries, wide, where=filters, refine=refine
        )  # [n, c]
        scores, ids = dense_scores, dense_ids
        if self.hubness is not None:
            scores, ids = self._corrected(scores, ids, query_modality, keep)  # [n, keep]
        if self.rerank:
            scores, ids = self._reranked(asked, scores, ids, query_modality)
        scores, ids = scores[:, : int(k)], ids[:, : int(k)]
        return self._hits(scores, ids, _dense_of(ids, dense_ids, dense_scores))

    def scoring(self, query_modality: str | None) -> str:
        """What the hit scores of a query of ``query_modality`` are: ``"cosine"``, the hubness method
        (``"isoftmax"`` / ``"csls"``: cosine minus the item's hub penalty), or that followed by
        ``"+match"`` when the best ``rerank`` hits carry the match head's probability instead."""
        if self.hybrid is not None and query_modality == "text":
            return self.hybrid.scoring
        if query_modality is None or (self.hubness is None and not self.rerank):
            return "cosine"
        if query_modality not in ("text", "image"):
            raise ValueError(f"query_modality must be 'text', 'image' or None; received {query_modality!r}")
        base = self.hubness.method if self.hubness is not None else "cosine"
        return f"{base}+match" if self.rerank else base

    def _reranked(
        self, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray, query_modality: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``rerank`` candidates of each row re-ordered by match probability (stable)."""
        n = min(self.rerank, ids.shape[1])
        head = self.model.match_head
        scores, ids = scores.copy(), ids.copy()
        valid = ids[:, :n] >= 0  # [q, n]
        rows, cols = np.nonzero(valid)
        if len(rows) == 0:
            return scores, ids
        unique, inverse = np.unique(ids[rows, cols], return_inverse=True)
        items = self.collection.vectors(unique)[inverse]  # [m, D]
        query_rows = queries[rows]  # [m, D]
        if query_modality == "text":
            probs = head.probabilities(items, query_rows)  # [m]
        else:
            probs = head.probabilities(query_rows, items)
        table = np.full((len(ids), n), -np.inf)  # [q, n]; padding stays last
        table[rows, cols] = probs
        order = np.argsort(-table, axis=1, kind="stable")  # [q, n]
        ids[:, :n] = np.take_along_axis(ids[:, :n], order, 1)
        reordered = np.take_along_axis(table, order, 1)
        scores[:, :n] = np.where(np.isfinite(reordered), reordered, scores[:, :n]).astype(scores.dtype)
        return scores, ids

    def _corrected(
        self, scores: np.ndarray, ids: np.ndarray, query_modality: str, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of the candidates ``[n, c]`` by hubness-corrected score; each candidate's
        penalty is looked up (computed once per item, :mod:`retrieval.search.penalties`)."""
        valid = ids >= 0  # [n, c]
        unique, inverse = np.unique(ids[valid], return_inverse=True)  # [u]
        if len(unique) == 0:
            return scores[:, :k], ids[:, :k]
        penalties = self.penalty_table(query_modality).lookup(unique, self.collection)  # [u]
        aligned = np.zeros(ids.shape, dtype=np.float32)  # [n, c]
        aligned[valid] = penalties[inverse]
        return rerank(scores, ids, aligned, k)

    def penalty_table(self, query_modality: str) -> PenaltyTable:
        """The hub penalties of the collection's items for queries of ``query_modality``: read from
        beside a local collection's query bank when still valid, else filled as queries need them
        (:meth:`prepare` fills them all at once)."""
        if self.hubness is None or self.query_bank is None:
            raise ValueError("this Searcher corrects no hubness: pass hubness= (and a query bank)")
        table = self._tables.get(query_modality)
        if table is None:
            location = getattr(self.collection, "path", None)
            local = location is not None and os.path.isdir(str(location))
            path = penalty_table_path(location, query_modality, self.hubness) if local else None
            bank = self.query_bank.for_queries(query_modality)  # [B, D]
            table = PenaltyTable.open(self.collection, bank, self.hubness, query_modality, path=path)
            table = self._tables.setdefault(query_modality, table)
        return table

    def prepare(self) -> None:
        """Compute the hub penalty of every item now (for each query modality the bank holds), so
        that no corrected query computes any; a no-op without hubness correction."""
        if self.hubness is None or self.query_bank is None:
            return
        for modality in ("text", "image"):
            if len(self.query_bank.vectors.get(modality, ())):
                self.penalty_table(modality).update(self.collection)
        self._store_tables()

    def _store_tables(self) -> None:
        """Write the penalty tables that changed beside the collection's query bank, where allowed."""
        for table in self._tables.values():
            if table.dirty and table.path is not None:
                try:
                    table.save()
                except OSError as exc:  # a read-only place: the penalties are recomputed next time
                    logger.debug("hub penalties not stored at %s: %s", table.path, exc)

    # -- the four directions --------------------------------------------------------------------
    def text_to_image(
        self, query: str, k: int = 10, *, where: Mapping[str, Any] | None = None, refine: int | None = None
    ) -> list[Hit]:
        """Images best matching a text query."""
        return self.text_to_image_batch([one_text(query)], k, where=where, refine=refine)[0]

    def text_to_image_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[list[Hit]]:
        if self.hybrid is not None:
            return self.search_hybrid(queries, k=k, modality="image", where=where, refine=refine)
        return self.search_vectors(
            self.encode_texts(queries), k, modality="image", where=where, refine=refine, query_modality="text"
        )

    def text_to_text(
        self, query: str, k: int = 10, *, where: Mapping[str, Any] | None = None, refine: int | None = None
    ) -> list[Hit]:
        """Captions best matching a text query."""
        return self.text_to_text_batch([one_text(query)], k, where=where, refine=refine)[0]

    def text_to_text_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[list[Hit]]:
        if self.hybrid is not None:
            return self.search_hybrid(queries, k=k, modality="text", where=where, refine=refine)
        return self.search_vectors(
            self.encode_texts(queries), k, modality="text", where=where, refine=refine, query_modality="text"
        )

    def search_hybrid(
        self,
        queries: Sequence[str],
        vectors: Any = None,
        k: int = 10,
        *,
        modality: str | None = None,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
        hybrid: Hybrid | None = None,
    ) -> list[list[Hit]]:
        """Hits of text queries by both arms fused (``hybrid``, default the searcher's; see
        :mod:`retrieval.search.hybrid`); ``vectors`` [n, D] are their embeddings when already encoded."""
        chosen = self._check_hybrid(hybrid) if hybrid is not None else self.hybrid
        if chosen is None:
            raise ValueError(
                "search_hybrid needs hybrid settings: Searcher(..., hybrid=Hybrid(...)) or hybrid="
            )
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError(f"text queries must be a sequence of str; received {type(queries).__name__}")
        texts = [one_text(q) for q in queries]
        if not texts:
            return []
        if vectors is not None:
            vectors = as_query_vectors(vectors, self.collection.dim)
        fused = hybrid_search(
            self, texts, vectors, k, modality=modality, where=where, refine=refine, hybrid=chosen
        )
        valid = fused.ids >= 0  # [n, k]; padding comes last
        flat = fused.ids[valid]
        by_id = dict(zip(flat.tolist(), self.collection.get(flat) if len(flat) else []))

        def number(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return [
            [
                Hit(int(i), float(s), dict(by_id[int(i)]), number(c), number(b))
                for i, s, c, b in zip(fused.ids[r], fused.scores[r], fused.cosines[r], fused.lexical[r])
                if i >= 0
            ]
            for r in range(fused.ids.shape[0])
        ]

    def image_to_text(
        self,
        image: ImageQuery,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[Hit]:
        """Captions best matching an image (a PIL image or a path)."""
        return self.image_to_text_batch([image], k, where=where, refine=refine)[0]

    def image_to_text_batch(
        self,
        images: Sequence[ImageQuery],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[list[Hit]]:
        return self.search_vectors(
            self.encode_images(images), k, modality="text", where=where, refine=refine, query_modality="image"
        )

    def image_to_image(
        self,
        image: ImageQuery,
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[Hit]:
        """Images most similar to an image (a PIL image or a path)."""
        return self.image_to_image_batch([image], k, where=where, refine=refine)[0]

    def image_to_image_batch(
        self,
        images: Sequence[ImageQuery],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[list[Hit]]:
        return self.search_vectors(
            self.encode_images(images),
            k,
            modality="image",
            where=where,
            refine=refine,
            query_modality="image",
        )

    def composed(
        self,
        image: ImageQuery,
        text: str,
        k: int = 10,
        *,
        text_weight: float = 0.5,
        modality: str | None = "image",
        where: Mapping[str, Any] | None = None,
        refine: int | None = None,
    ) -> list[Hit]:
        """Items best matching an image modified by a text: ``(1 - w) * image + w * text``, renormalised.

        ``text_weight`` (``w``) in [0, 1] moves the query from the image (0) to the text (1).
        """
        if not 0.0 <= float(text_weight) <= 1.0:
            raise ValueError(f"text_weight must be in [0, 1]; received {text_weight!r}")
        image_vec = self.encode_images([image])[0]  # [D]
        text_vec = self.encode_texts([one_text(text)])[0]  # [D]
        query = (1.0 - text_weight) * image_vec + text_weight * text_vec  # [D]
        if np.linalg.norm(query) < 1e-6:
            raise ValueError("the image and text queries cancel out: change text_weight")
        return self.search_vector(query, k, modality=modality, where=where, refine=refine)

    # -- helpers --------------------------------------------------------------------------------
    def _filters(self, modality: str | None, where: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if where is not None and not isinstance(where, Mapping):
            raise TypeError(f"where must be a mapping of field -> condition; received {type(where).__name__}")
        if modality not in (None, "image", "text"):
            raise ValueError(f"modality must be 'image', 'text' or None; received {modality!r}")
        merged = dict(where or {})
        if modality is None or not self._has_modality:
            return merged or None
        if "modality" in merged:
            wanted = merged["modality"]
            allowed = set(wanted) if isinstance(wanted, (list, tuple, set)) else {wanted}
            if modality not in allowed:
                raise ValueError(
                    f"where={{'modality': {wanted!r}}} contradicts a search for {modality} items: drop the "
                    "modality condition or use the method for the modality you want"
                )
        if self._only_modality() != modality:  # when every item is of this modality, no filter is faster
            merged["modality"] = modality
        return merged or None

    def _only_modality(self) -> str | None:
        """The modality of every item when the collection holds one only (checked once per size)."""
        size = len(self.collection)
        if self._single[0] != size:
            probe = np.zeros((1, int(self.collection.dim)), dtype=np.float32)  # [1, D]
            probe[0, 0] = 1.0
            present = [
                m
                for m in ("image", "text")
                if self.collection.search(probe, 1, where={"modality": m})[1][0, 0] >= 0
            ]
            self._single = (size, present[0] if len(present) == 1 else None)
        return self._single[1]

    def _hits(self, scores: np.ndarray, ids: np.ndarray, cosines: np.ndarray) -> list[list[Hit]]:
        valid = ids >= 0  # [n, k]; -1 pads rows with fewer than k matches
        flat = ids[valid]
        metadata = self.collection.get(flat) if len(flat) else []
        by_id = {int(i): m for i, m in zip(flat.tolist(), metadata)}
        return [
            [
                Hit(int(i), float(s), dict(by_id[int(i)]), float(c))
                for i, s, c, ok in zip(row_ids, row_scores, row_cosines, row_ok)
                if ok
            ]
            for row_ids, row_scores, row_cosines, row_ok in zip(ids, scores, cosines, valid)
        ]


def _dense_of(ids: np.ndarray, dense_ids: np.ndarray, dense_scores: np.ndarray) -> np.ndarray:
    """[n, k] index similarity of each id in ``ids`` [n, k], looked up in its row of the dense
    candidates ``dense_ids`` / ``dense_scores`` [n, c] (NaN for padding)."""
    out = np.full(ids.shape, np.nan, dtype=np.float32)  # [n, k]
    for row in range(ids.shape[0]):
        lookup = dict(zip(dense_ids[row].tolist(), dense_scores[row].tolist()))
        out[row] = [lookup.get(int(i), np.nan) for i in ids[row]]
    return out
