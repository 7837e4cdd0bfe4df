"""Open or create a collection at any location, so callers never branch on where it lives.

>>> import numpy as np, tempfile
>>> from indexes import create_collection, open_collection
>>> with tempfile.TemporaryDirectory() as tmp:
...     with create_collection(tmp + "/c", dim=4, index="Flat") as coll:
...         ids = coll.add(np.eye(4, dtype=np.float32), [{"n": i} for i in range(4)])
...     with open_collection(tmp + "/c", read_only=True) as coll:
...         print(len(coll), coll.search(np.eye(4)[:1], k=1)[1].tolist())
4 [[0]]

A location is a local folder (:class:`indexes.Collection`) or a Milvus location
(``milvus://HOST:PORT/NAME``, ``milvus-lite://PATH.db/NAME``: :class:`indexes.milvus.MilvusCollection`);
:mod:`indexes.location` parses them. Both classes offer the surface of :class:`VectorCollection`.
pymilvus is imported only when a Milvus location is opened.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexes.limits import Limits
from indexes.location import Location, parse_location

__all__ = ["VectorCollection", "collection_exists", "create_collection", "open_collection"]


@runtime_checkable
class VectorCollection(Protocol):
    """The surface every collection offers, wherever it lives."""

    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def fingerprint(self) -> str | None: ...
    @property
    def model_info(self) -> dict[str, Any] | None: ...
    @property
    def index_spec(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def needs_rebuild(self) -> bool: ...

    def __len__(self) -> int: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...
    def add(self, vectors: Any, metadata: Any = None, *, ids: Any = None) -> np.ndarray: ...
    def reserve_ids(self, next_id: int) -> None: ...
    def remove(self, ids: Any) -> None: ...
    def get(self, ids: Any) -> list[dict[str, Any]]: ...
    def vectors(self, ids: Any) -> np.ndarray: ...
    def ids(self) -> np.ndarray: ...
    def fields(self) -> list[str]: ...
    def info(self) -> dict[str, Any]: ...
    def check_fingerprint(self, fingerprint: str | None) -> None: ...
    def search(
        self, queries: Any, k: int, where: dict[str, Any] | None = None, refine: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @property
    def text_fields(self) -> list[str]: ...
    def search_text(
        self, queries: Any, k: int, where: dict[str, Any] | None = None, fields: Any = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def set_text_fields(self, text_fields: Any, stemming: str | None = None) -> None: ...
    def tune(
        self, recall_target: float | None = None, queries: Any = None, k: int = 10
    ) -> dict[str, Any]: ...
    def set_tuning_queries(self, queries: dict[str, tuple[Any, dict[str, Any] | None]] | None) -> None: ...
    def rebuild(self, index: str | None = None) -> None: ...
    def save(self) -> None: ...
    def close(self) -> None: ...


def _milvus() -> Any:
    from indexes.milvus import MilvusCollection  # imports pymilvus on first connection only

    return MilvusCollection


def open_collection(
    location: str | os.PathLike[str] | Location,
    read_only: bool = False,
    mmap: bool = False,
    fingerprint: str | None = None,
    limits: Limits | None = None,
) -> VectorCollection:
    """Open the collection at ``location`` (a folder, ``milvus://...`` or ``milvus-lite://...``).

    ``read_only`` / ``mmap`` as in :meth:`indexes.Collection.open` (Milvus accepts ``mmap`` and
    ignores it). ``fingerprint``, when given, must be the model that built the collection:
    otherwise ``ValueError`` (see ``check_fingerprint``) and nothing is left open. ``limits``: the
    sizes at which the handle changes path (:class:`indexes.Limits`).
    """
    loc = parse_location(location)
    coll: VectorCollection
    if loc.is_milvus:
        coll = _milvus().open(loc, mmap=mmap, read_only=read_only, limits=limits)
    else:
        from indexes.collection import Collection

        coll = Collection.open(loc.path, mmap=mmap, read_only=read_only, limits=limits)  # type: ignore[arg-type]
    try:
        coll.check_fingerprint(fingerprint)
    except BaseException:
        coll.close()
        raise
    return coll


def create_collection(
    location: str | os.PathLike[str] | Location,
    dim: int,
    metric: str = "ip",
    index: str = "auto",
    fingerprint: str | None = None,
    memory_budget: int | str | None = None,
    recall_target: float = 0.95,
    overwrite: bool = False,
    model_info: dict[str, Any] | None = None,
    limits: Limits | None = None,
    text_fields: Any = None,
    stemming: str | None = None,
) -> VectorCollection:
    """Create an empty collection at ``location`` and return it open for writing.

    Arguments as in :meth:`indexes.Collection.create`; on Milvus ``index`` is ``"auto"`` or one of
    the factory strings Milvus can build (see :mod:`indexes.milvus.kinds`), and ``text_fields`` need
    Milvus 2.5+ (BM25 full-text search: :mod:`indexes.milvus.text`).
    """
    loc = parse_location(location)
    kwargs: dict[str, Any] = dict(
        metric=metric,
        index=index,
        fingerprint=fingerprint,
        memory_budget=memory_budget,
        recall_target=recall_target,
        overwrite=overwrite,
    )
    if model_info is not None:
        kwargs["model_info"] = model_info
    if limits is not None:
        kwargs["limits"] = limits
    if text_fields is not None:
        kwargs.update(text_fields=text_fields, stemming=stemming)
    if loc.is_milvus:
        return _milvus().create(loc, dim, **kwargs)
    from indexes.collection import Collection

    return Collection.create(loc.path, dim, **kwargs)  # type: ignore[arg-type]


def collection_exists(location: str | os.PathLike[str] | Location) -> bool:
    """True when a collection exists at ``location`` (for Milvus this asks the server)."""
    loc = parse_location(location)
    if loc.is_milvus:
        return bool(_milvus().exists(loc))
    from indexes.persist import MANIFEST

    assert loc.path is not None
    return (loc.path / MANIFEST).is_file()
