"""clip-retrieval's back-end API, so its ``ClipClient`` and its web front end can use this server.

The request fields follow clip-retrieval's documented knn service (``clip_back``): a JSON body
(sent with any or no content type) holding one of ``text``, ``image`` (base64),
``image_url`` or ``embedding_input``, plus ``modality`` (which kind of item to return),
``num_images``, ``num_result_ids``, ``indice_name`` and ``deduplicate``. The answer is a
list of ``{"id", "similarity", "cosine", ...metadata, "url"?, "caption"?}``; items past
``num_images`` carry only ``id``, ``similarity`` and ``cosine`` (the front end fetches the rest
through ``/metadata``). ``similarity`` is scored as the JSON API scores the same query (hubness
correction and re-ranking of text and image queries when the server applies them), with the
plain ``cosine`` beside it; the ``X-Scoring`` response header names the scoring.

Options that need models this toolkit does not ship (``use_safety_model``,
``use_violence_detector``, ``use_mclip``, ``aesthetic_score``/``aesthetic_weight``) are
accepted and ignored; the response header ``X-Ignored-Options`` names the ones a request set.
Reference: https://github.com/rom1504/clip-retrieval (clip_back, clip_client, front).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from retrieval.search import Hit
from retrieval.serve.errors import SafeJSONResponse, bad_request
from retrieval.serve.inputs import (
    check_embedding,
    check_k,
    check_modality,
    check_text,
    check_where,
    decode_base64,
    decode_image,
    parse_json,
)
from retrieval.serve.routes import image_path, visible
from retrieval.serve.served_collection import ServedCollection
from retrieval.serve.service import Service
from retrieval.serve.urls import fetch_image_url

IGNORED_OPTIONS = (
    "use_mclip",
    "use_safety_model",
    "use_violence_detector",
    "aesthetic_score",
    "aesthetic_weight",
)

_KNN_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "nullable": True, "description": "text query"},
        "image": {"type": "string", "nullable": True, "description": "base64 image query"},
        "image_url": {
            "type": "string",
            "nullable": True,
            "description": "image URL query (if the server allows)",
        },
        "embedding_input": {"type": "array", "items": {"type": "number"}, "nullable": True},
        "modality": {"type": "string", "enum": ["image", "text"], "default": "image"},
        "num_images": {"type": "integer", "default": 40},
        "num_result_ids": {
            "type": "integer",
            "description": "ids to return (first num_images with metadata)",
        },
        "indice_name": {"type": "string", "description": "collection name (default: the first one)"},
        "deduplicate": {"type": "boolean", "default": False},
        "where": {"type": "object", "description": "metadata filter (an extension of this server)"},
        **{name: {"description": "accepted and ignored"} for name in IGNORED_OPTIONS},
    },
}
_METADATA_SCHEMA = {
    "type": "object",
    "required": ["ids"],
    "properties": {
        "ids": {"type": "array", "items": {"type": "integer"}},
        "indice_name": {"type": "string"},
    },
}


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    # Large bodies (base64 images) are parsed in a worker thread, away from the event loop.
    body = await asyncio.to_thread(parse_json, raw) if len(raw) > 256 * 1024 else parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request(
            "bad_json", f"the request body must be a JSON object, received {type(body).__name__}"
        )
    return body


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != []


def _clip_item(served: ServedCollection, hit: Hit, base_url: str) -> dict[str, Any]:
    out = dict(visible(served, hit.metadata))
    if "url" not in out:
        path = image_path(served, hit.id, hit.metadata)
        if path is not None:
            out["url"] = base_url.rstrip("/") + path
    out["id"] = hit.id
    out["similarity"] = hit.score
    out["cosine"] = _finite(hit.cosine)
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def clip_router(service: Service) -> APIRouter:
    config = service.config
    router = APIRouter(tags=["clip-retrieval compatible"])

    @router.get("/indices-list", summary="Names of the served collections")
    async def indices_list() -> list[str]:
        return list(service.collections)

    @router.post("/indices-list", summary="Names of the served collections (POST, as some clients send)")
    async def indices_list_post() -> list[str]:
        return list(service.collections)

    @router.post(
        "/knn-service",
        summary="clip-retrieval knn service: nearest items to a text, base64 image, image URL or embedding",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": _KNN_SCHEMA}}, "required": True}
        },
    )
    async def knn_service(request: Request) -> SafeJSONResponse:
        body = await _json_body(request)
        served = service.get(body.get("indice_name"))
        modality = check_modality(body.get("modality", "image")) or "image"
        num_images = check_k(body.get("num_images", min(40, config.max_k)), config.max_k, "num_images")
        num_ids = body.get("num_result_ids")
        num_ids = num_images if num_ids is None else check_k(num_ids, 10**9, "num_result_ids")
        num_ids = min(max(num_ids, num_images), config.max_result_ids)
        where = check_where(body.get("where"), await served.run(served.fields))
        vector, query_modality = await _query_vector(served, body)
        hits = (
            await served.run(
                lambda: served.search(
                    vector,
                    num_images,
                    where,
                    modality,
                    fetch=num_ids,
                    deduplicate=bool(body.get("deduplicate")),
                    query_modality=query_modality,
                )
            )
        )[0]
        base_url = str(request.base_url)
        headers = {"X-Scoring": served.scoring(query_modality)}
        ignored = [name for name in IGNORED_OPTIONS if body.get(name) not in (None, False, "", 0)]
        if ignored:
            headers["X-Ignored-Options"] = ",".join(ignored)
        items = [
            _clip_item(served, h, base_url)
            if i < num_images
            else {"id": h.id, "similarity": h.score, "cosine": _finite(h.cosine)}
            for i, h in enumerate(hits)
        ]
        return SafeJSONResponse(items, headers=headers)

    async def _query_vector(served: ServedCollection, body: dict[str, Any]) -> tuple[np.ndarray, str | None]:
        """The query vector ``[1, D]`` and what it encodes ("text", "image", or None for a raw vector)."""
        text, image, url, embedding = (body.get(f) for f in ("text", "image", "image_url", "embedding_input"))
        if _present(embedding) and not any(_present(v) for v in (text, image, url)):
            return check_embedding(embedding, await served.run(served.dim), 1), None
        if not any(_present(v) for v in (text, image, url, embedding)):
            raise bad_request("no_query", "fill one of text, image (base64), image_url or embedding_input")
        served.require_model()
        if _present(text):
            vector = await service.work(served.encode_texts, [check_text(text, config.max_text_chars)])
            return vector, "text"  # [1, D]
        if _present(image):
            data = decode_base64(image, max_bytes=config.max_upload_bytes)
        else:
            if not config.allow_image_urls:
                raise bad_request(
                    "urls_disabled",
                    "this server does not download images from URLs; start it with --allow-image-urls",
                )
            data = await service.work(
                lambda: fetch_image_url(
                    url,
                    max_bytes=config.max_upload_bytes,
                    timeout=config.url_timeout,
                    allow_private=config.allow_private_urls,
                )
            )
        picture = await service.work(
            lambda: decode_image(data, max_bytes=config.max_upload_bytes, max_pixels=config.max_image_pixels)
        )
        return await service.work(served.encode_images, [picture]), "image"  # [1, D]

    @router.post(
        "/metadata",
        summary="clip-retrieval metadata service: metadata of items by id",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": _METADATA_SCHEMA}}, "required": True}
        },
    )
    async def metadata(request: Request) -> list[dict[str, Any]]:
        body = await _json_body(request)
        served = service.get(body.get("indice_name"))
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad_request("bad_ids", "ids must be a list of integer item ids")
        if len(ids) > config.max_result_ids:
            raise bad_request("bad_ids", f"{len(ids)} ids, more than the limit of {config.max_result_ids}")
        found = await served.run(served.metadata, ids)
        base_url = str(request.base_url)
        out = []
        for i in ids:
            if i in found:
                item = _clip_item(served, Hit(i, 0.0, found[i]), base_url)
                del item["id"], item["similarity"], item["cosine"]
                out.append({"id": i, "metadata": item})
        return out

    return router
