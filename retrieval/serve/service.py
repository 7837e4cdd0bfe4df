"""The :class:`Service`: everything the routes share (config, served collections, models, worker pool)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from retrieval.config import ServeConfig
from retrieval.embed import recorded_model
from retrieval.serve.auth import ReloadGate
from retrieval.serve.batching import Encoder, ModelRunner, load_model
from retrieval.serve.errors import ApiError, not_found
from retrieval.serve.privacy import PathScrubber
from retrieval.serve.served_collection import ServedCollection
from retrieval.serve.thumbnails import ThumbnailCache

__all__ = ["Service"]

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Service:
    """Everything the routes share: the config, the served collections, the worker pool that
    decodes and encodes queries, the thumbnail cache (with its own threads), the reload
    permission and how server paths are shown."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        model: Encoder | None = None,
        models: Mapping[str, Encoder] | None = None,
    ) -> None:
        if not config.collections:
            raise ValueError(
                "ServeConfig.collections is empty: give at least one NAME -> collection directory"
            )
        for field in (
            "max_k",
            "max_text_chars",
            "max_upload_bytes",
            "max_image_pixels",
            "workers",
            "batch_size",
            "max_result_ids",
            "max_connections",
            "thumbnail_workers",
        ):
            if getattr(config, field) < 1:
                raise ValueError(f"ServeConfig.{field} must be >= 1, received {getattr(config, field)}")
        bad_names = sorted(n for n in config.collections if not _NAME.fullmatch(n))
        if bad_names:
            raise ValueError(
                f"collection name(s) {bad_names} cannot appear in URLs: use letters, digits, '.', '_' or '-'"
            )
        unknown = sorted(
            (set(config.models) | set(config.media_roots) | set(models or {})) - set(config.collections)
        )
        if unknown:
            raise ValueError(
                f"models/media roots given for unknown collection name(s) {unknown}; "
                f"served collections are {sorted(config.collections)}"
            )
        for field in ("header_timeout", "body_timeout"):
            if not getattr(config, field) > 0:
                raise ValueError(
                    f"ServeConfig.{field} must be > 0 seconds, received {getattr(config, field)}"
                )
        for field in ("max_connections_per_client", "thumbnail_cache_bytes", "reload_min_interval"):
            if getattr(config, field) < 0:
                raise ValueError(f"ServeConfig.{field} must be >= 0, received {getattr(config, field)}")
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="serve-worker")
        self.thumbnails = ThumbnailCache(
            max_bytes=config.thumbnail_cache_bytes,
            workers=config.thumbnail_workers,
            max_pixels=config.max_image_pixels,
        )
        self.reload_gate = ReloadGate(config.api_key, config.reload_key, config.reload_min_interval)
        self.paths = PathScrubber(
            show=config.show_paths,
            extra_roots=[
                *config.collections.values(),
                *config.media_roots.values(),
                *config.models.values(),
                *([config.model] if config.model else []),
            ],
        )
        self.collections: dict[str, ServedCollection] = {}
        runners: dict[str, ModelRunner] = {}  # model source -> runner, so a model is loaded once

        def runner_for(name: str) -> ModelRunner | None:
            if models and name in models:
                key = f"<object {id(models[name])}>"
                if key not in runners:
                    runners[key] = ModelRunner(
                        models[name], f"in-memory model for {name!r}", config.batch_size
                    )
                return runners[key]
            directory = config.models.get(name)
            if directory is None and model is not None:
                if "<default>" not in runners:
                    runners["<default>"] = ModelRunner(model, "in-memory default model", config.batch_size)
                return runners["<default>"]
            if directory is None:
                directory = config.model or _recorded_model(config.collections[name])
            if directory is None:
                return None
            if directory not in runners:
                runners[directory] = load_model(
                    directory, device=config.device, batch_size=config.batch_size, runtime=config.runtime
                )
            return runners[directory]

        try:
            for name, path in config.collections.items():
                self.collections[name] = ServedCollection(
                    name,
                    path,
                    runner_for(name),
                    media_root=config.media_roots.get(name),
                    reload_interval=config.reload_interval,
                    mmap=config.mmap,
                    hidden_fields=config.hidden_fields,
                    hubness=config.hubness,
                    rerank=config.rerank,
                    paths=self.paths,
                    expand=config.expand,
                )
        except BaseException:
            self.close()
            raise

    def get(self, name: Any) -> ServedCollection:
        if name is None or name == "":
            return next(iter(self.collections.values()))
        if not isinstance(name, str):
            raise ApiError(
                400, "bad_collection", f"a collection name must be a string, received {name!r:.100}"
            )
        try:
            return self.collections[name]
        except KeyError:
            raise not_found(
                "unknown_collection",
                f"no collection named {name!r}; served collections: {sorted(self.collections)}",
            ) from None

    async def work(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (decoding, encoding) in the shared worker pool."""
        return await asyncio.wrap_future(self.pool.submit(fn, *args))

    def close(self) -> None:
        for served in self.collections.values():
            served.close()
        self.collections.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.thumbnails.close()


def _recorded_model(collection_path: str) -> str | None:
    """The model ``retrieval embed`` recorded for a collection: a folder that still exists, or a hub
    id pinned to the commit used."""
    try:
        recorded = recorded_model(collection_path)
    except (OSError, ValueError):
        return None
    if recorded is None:
        return None
    return recorded if os.path.isdir(recorded) or not os.path.isabs(recorded) else None
