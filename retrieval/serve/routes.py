"""The service's own JSON API under ``/collections``."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from retrieval.search import Hit, Hybrid
from retrieval.serve.auth import RELOAD_KEY_HEADER
from retrieval.serve.errors import bad_request, not_found
from retrieval.serve.inputs import (
    check_embedding,
    check_k,
    check_modality,
    check_text,
    check_where,
    decode_image,
)
from retrieval.serve.media import IMAGE_FIELDS
from retrieval.serve.served_collection import ServedCollection
from retrieval.serve.service import Service
from retrieval.serve.thumbnails import ThumbnailsBusy
from retrieval.serve.urls import fetch_image_url

# Images served from the media root may be SVG: never let them run scripts in our origin.
# (Cross-Origin-Resource-Policy is set on every response: retrieval.serve.guards.)
MEDIA_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "Cache-Control": "private, max-age=3600",
}

Modality = Literal["image", "text"]
Number = Annotated[float, Field(strict=True)]  # a JSON number; never a string or a boolean

SCORING_HELP = (
    "what hit scores are: 'cosine' (query-item cosine similarity), 'isoftmax' or 'csls' (cosine minus "
    "the item's hubness penalty: may be negative, only the order matters; the cosine is beside it), "
    "with '+match' when the best hits were re-ranked by the match head (their score is its probability); "
    "for hybrid text searches 'rrf' (reciprocal rank fusion of the dense and the lexical ranks), "
    "'weighted' (alpha * normalised dense score + (1 - alpha) * normalised BM25) or 'bm25' (words alone)"
)


class HybridIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: list[str] | None = Field(
        None, description="indexed text fields to match (default: all visible ones)"
    )
    fusion: Literal["rrf", "weighted", "lexical"] = Field(
        "rrf",
        description="rrf: reciprocal rank fusion; weighted: normalised scores mixed by alpha; lexical: words alone",
    )
    k: StrictInt = Field(60, description="rrf: the rank constant")
    alpha: Number = Field(0.5, description="weighted: the share of the dense search (0..1)")
    candidates: StrictInt = Field(100, description="hits of each arm that are fused")


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: StrictInt = Field(10, description="number of results (1 .. the server's max_k)")
    where: dict[str, Any] | None = Field(
        None,
        description='metadata filter: {"field": value} | {"field": [v1, v2]} | {"field": {"gte": a, "lt": b}}',
    )
    modality: Modality | None = Field(
        None, description="only items of this modality (when the collection records it)"
    )


class TextQuery(_Query):
    text: str = Field(..., description="the query text")
    hybrid: bool | HybridIn = Field(
        False,
        description="also match the words of the query in the items' indexed text fields (BM25) and fuse "
        "both rankings: true for the defaults (RRF over every indexed field), or the settings",
    )


class UrlQuery(_Query):
    url: str = Field(..., description="http(s) URL of the query image (the server must allow image URLs)")


class EmbeddingQuery(_Query):
    embedding: list[Number] = Field(..., description="query vector of the collection's dim (normalised here)")


class ItemQuery(_Query):
    id: StrictInt = Field(..., description="id of a stored item whose vector is the query")


class HitOut(BaseModel):
    id: int
    score: float = Field(..., description="what the hits are ordered by (see the answer's 'scoring')")
    cosine: float | None = Field(None, description="cosine similarity of query and item (the index score)")
    lexical: float | None = Field(
        None, description="hybrid searches: the item's BM25 score, when its words matched"
    )
    metadata: dict[str, Any]
    image_url: str | None = Field(None, description="where the page can fetch the item's image, if served")


class SearchOut(BaseModel):
    collection: str
    k: int
    took_ms: float
    scoring: str = Field("cosine", description=SCORING_HELP)
    hits: list[HitOut]


class ItemOut(BaseModel):
    id: int
    metadata: dict[str, Any]
    image_url: str | None = None


def image_path(served: ServedCollection, item_id: int, metadata: dict[str, Any]) -> str | None:
    """The relative URL of an item's image, when the collection serves media and the item has a file."""
    if served.media_root is None or not any(isinstance(metadata.get(f), str) for f in IMAGE_FIELDS):
        return None
    return f"/collections/{served.name}/items/{item_id}/image"


def visible(served: ServedCollection, metadata: dict[str, Any]) -> dict[str, Any]:
    """What a client sees of an item's metadata: no hidden fields, no server paths (unless shown)."""
    shown = {k: v for k, v in metadata.items() if k not in served.hidden_fields}
    return served.paths.metadata(shown, served.media_root)


def hit_out(served: ServedCollection, hit: Hit) -> HitOut:
    return HitOut(
        id=hit.id,
        score=hit.score,
        cosine=_finite(hit.cosine),
        lexical=_finite(hit.lexical),
        metadata=visible(served, hit.metadata),
        image_url=image_path(served, hit.id, hit.metadata),
    )


def _hybrid_of(value: bool | HybridIn) -> Hybrid | None:
    """The request's hybrid settings (None: dense search only); 400 on settings out of range."""
    if value is False:
        return None
    try:
        if value is True:
            return Hybrid()
        data = value.model_dump()
        return Hybrid(
            fields=tuple(data["fields"]) if data["fields"] is not None else None,
            fusion=data["fusion"],
            k=data["k"],
            alpha=data["alpha"],
            candidates=data["candidates"],
        )
    except ValueError as exc:
        raise bad_request("bad_hybrid", str(exc)) from None


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def api_router(service: Service) -> APIRouter:
    config = service.config
    router = APIRouter(prefix="/collections", tags=["collections"])

    async def checked(served: ServedCollection, k: Any, where: Any, modality: Any) -> tuple[Any, ...]:
        """Validate the common query fields before any encoding work is spent."""
        fields = await served.run(served.fields)
        return check_k(k, config.max_k), check_where(where, fields), check_modality(modality)

    async def run_search(
        served: ServedCollection,
        vector: np.ndarray,
        query: tuple[Any, ...],
        t0: float,
        query_modality: str | None = None,
    ) -> SearchOut:
        k, where, modality = query
        search = functools.partial(served.search, query_modality=query_modality)
        hits = (await served.run(search, vector, k, where, modality))[0]
        return SearchOut(
            collection=served.name,
            k=k,
            took_ms=round((time.perf_counter() - t0) * 1000, 3),
            scoring=served.scoring(query_modality),
            hits=[hit_out(served, h) for h in hits],
        )

    async def encode_image_bytes(served: ServedCollection, data: bytes) -> np.ndarray:
        served.require_model()
        image = await service.work(
            lambda: decode_image(data, max_bytes=config.max_upload_bytes, max_pixels=config.max_image_pixels)
        )
        return await service.work(served.encode_images, [image])  # [1, D]

    @router.get("", summary="Every served collection's info, and the request limits")
    async def list_collections() -> dict[str, Any]:
        limits = {
            "max_k": config.max_k,
            "max_text_chars": config.max_text_chars,
            "max_upload_bytes": config.max_upload_bytes,
            "image_urls": config.allow_image_urls,
        }
        return {"collections": [await s.run(s.info) for s in service.collections.values()], "limits": limits}

    @router.get("/{name}", summary="A collection's count, dim, metric, index spec and model fingerprints")
    async def collection_info(name: str) -> dict[str, Any]:
        served = service.get(name)
        return await served.run(served.info)

    @router.post(
        "/{name}/reload",
        summary="Reopen a collection changed on disk by another process (needs the reload permission)",
    )
    async def reload(
        name: str,
        reload_key: Annotated[
            str | None,
            Header(alias=RELOAD_KEY_HEADER, description="the server's reload key, when it has one"),
        ] = None,
    ) -> dict[str, Any]:
        service.reload_gate.check(reload_key)
        served = service.get(name)
        with service.reload_gate.slot(served.name):
            reloaded = await served.run(served.reopen, True)
        return {"reloaded": reloaded, "info": await served.run(served.info)}

    @router.post("/{name}/search/text", summary="Search by text (optionally hybrid: words and meaning)")
    async def search_text(name: str, query: TextQuery) -> SearchOut:
        t0 = time.perf_counter()
        served = service.get(name)
        text = check_text(query.text, config.max_text_chars)
        checks = await checked(served, query.k, query.where, query.modality)
        hybrid = _hybrid_of(query.hybrid)
        if hybrid is not None:
            return await run_hybrid(served, text, hybrid, checks, t0)
        served.require_model()
        vector = await service.work(served.encode_texts, [text])  # [1, D]
        return await run_search(served, vector, checks, t0, "text")

    async def run_hybrid(
        served: ServedCollection, text: str, hybrid: Hybrid, query: tuple[Any, ...], t0: float
    ) -> SearchOut:
        k, where, modality = query
        hybrid = await served.run(served.check_hybrid, hybrid)
        vector = None
        if hybrid.fusion != "lexical":
            served.require_model()
            vector = await service.work(served.encode_texts, [text])  # [1, D]
        hits = (await served.run(served.search_hybrid, [text], vector, k, where, modality, hybrid))[0]
        return SearchOut(
            collection=served.name,
            k=k,
            took_ms=round((time.perf_counter() - t0) * 1000, 3),
            scoring=hybrid.scoring,
            hits=[hit_out(served, h) for h in hits],
        )

    @router.post("/{name}/search/image", summary="Search by an uploaded image (multipart form)")
    async def search_image(
        name: str,
        image: Annotated[UploadFile, File(description="the query image (PNG, JPEG, WebP, ...)")],
        k: Annotated[int, Form()] = 10,
        where: Annotated[str | None, Form(description="metadata filter as a JSON object")] = None,
        modality: Annotated[Modality | None, Form()] = None,
    ) -> SearchOut:
        t0 = time.perf_counter()
        served = service.get(name)
        checks = await checked(served, k, where, modality)
        served.require_model()
        data = await image.read(config.max_upload_bytes + 1)
        vector = await encode_image_bytes(served, data)
        return await run_search(served, vector, checks, t0, "image")

    @router.post(
        "/{name}/search/url", summary="Search by an image URL (off unless the server allows image URLs)"
    )
    async def search_url(name: str, query: UrlQuery) -> SearchOut:
        t0 = time.perf_counter()
        served = service.get(name)
        if not config.allow_image_urls:
            raise bad_request(
                "urls_disabled",
                "this server does not download images from URLs; start it with --allow-image-urls",
            )
        checks = await checked(served, query.k, query.where, query.modality)
        served.require_model()
        data = await service.work(
            lambda: fetch_image_url(
                query.url,
                max_bytes=config.max_upload_bytes,
                timeout=config.url_timeout,
                allow_private=config.allow_private_urls,
            )
        )
        vector = await encode_image_bytes(served, data)
        return await run_search(served, vector, checks, t0, "image")

    @router.post("/{name}/search/embedding", summary="Search by a raw query vector")
    async def search_embedding(name: str, query: EmbeddingQuery) -> SearchOut:
        t0 = time.perf_counter()
        served = service.get(name)
        checks = await checked(served, query.k, query.where, query.modality)
        vector = check_embedding(query.embedding, await served.run(served.dim), 1)
        return await run_search(served, vector, checks, t0)

    @router.post("/{name}/search/item", summary="Search by a stored item's vector (more like this)")
    async def search_item(name: str, query: ItemQuery) -> SearchOut:
        t0 = time.perf_counter()
        served = service.get(name)
        checks = await checked(served, query.k, query.where, query.modality)
        vector = await served.run(served.item_vector, query.id)
        return await run_search(served, vector, checks, t0)

    @router.get("/{name}/items/{item_id}", summary="An item's metadata")
    async def item(name: str, item_id: int) -> ItemOut:
        served = service.get(name)
        found = await served.run(served.metadata, [item_id])
        if item_id not in found:
            raise not_found("unknown_item", f"collection {name!r} has no item with id {item_id}")
        meta = found[item_id]
        return ItemOut(
            id=item_id, metadata=visible(served, meta), image_url=image_path(served, item_id, meta)
        )

    @router.get(
        "/{name}/items/{item_id}/image",
        summary="An item's image file (only files inside the collection's media root)",
        response_class=Response,
    )
    async def item_image(
        name: str,
        item_id: int,
        max_side: Annotated[
            int | None, Query(ge=16, le=2048, description="a JPEG thumbnail no larger than this, for grids")
        ] = None,
    ) -> Response:
        served = service.get(name)
        content, media_type = await served.run(served.media, item_id)
        headers = MEDIA_HEADERS
        if max_side is not None:  # made in the thumbnail threads, not in the query pool
            try:
                thumb = await service.thumbnails.get(content, max_side)
            except ThumbnailsBusy:  # a flood of thumbnails: the original costs no decoding
                thumb, headers = None, {**MEDIA_HEADERS, "Cache-Control": "no-store", "X-Thumbnail": "busy"}
            if thumb is not None:
                return Response(thumb, media_type="image/jpeg", headers=MEDIA_HEADERS)
        if isinstance(content, Path):
            return FileResponse(content, media_type=media_type, headers=headers)
        return Response(content, media_type=media_type, headers=headers)

    return router
