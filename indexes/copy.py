"""Copy a collection to another location (a local folder <-> Milvus), keeping ids, vectors, metadata, fingerprint
and model provenance (``model_info``).

>>> from indexes import copy_collection
>>> report = copy_collection("photos.coll", "milvus://db.example.org:19530/photos")  # doctest: +SKIP

The source is read through the public surface only (``ids()``, ``vectors(ids)``,
``get(ids)``); the destination is written with ``add(vectors, metadata, ids=...)``, which
keeps the source's ids.

Safe to re-run. A copy that stopped half-way (killed, server down, network lost) is finished
by running the same call again: the destination is reopened, the ids it already holds are
skipped and only the rest is copied, so nothing is lost or doubled. The destination commits
every ``checkpoint`` items (``save()``): a local destination keeps what was committed before
an interruption; a Milvus destination keeps every batch the server acknowledged (and, since
batches are written with an upsert, a batch resent after an unclear failure replaces itself).
A destination holding ids the source lacks is refused (it is not a copy of this source);
``overwrite=True`` starts it afresh.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.backends import VectorCollection, collection_exists, create_collection, open_collection
from indexes.location import Location, parse_location

__all__ = ["CopyReport", "copy_collection"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyReport:
    """What a copy did."""

    source: str  # source location (no secrets)
    destination: str  # destination location (no secrets)
    total: int  # items in the source
    copied: int  # items this run wrote
    already_there: int  # items the destination held before this run (from an interrupted run)
    seconds: float  # wall time of this run


def _check_writes_ids(dst: Location) -> None:
    """Fail before any work when the destination cannot store items under given ids."""
    if dst.is_milvus:
        return
    from indexes.collection import Collection

    if "ids" not in inspect.signature(Collection.add).parameters:
        raise NotImplementedError(
            f"copying into the local folder {dst} needs Collection.add(vectors, metadata, ids=...) to keep the "
            "source's ids, which this version of indexes.Collection does not offer yet: copy into a Milvus "
            "location, or update siamese-retrieval"
        )


def _verify_source(src: Location) -> None:
    from indexes.files import DamagedFileError
    from indexes.verify import verify_path

    report = verify_path(str(src))
    if not report.ok:
        first = report.problems[0]
        raise DamagedFileError(
            Path(str(src)) / first.file,
            f"{first.detail} ({len(report.problems)} problem(s) found before copying)",
            f"nothing was copied; run `retrieval check {src} --repair` first",
        )


def _index_for(dst: Location, requested: str, dim: int) -> str:
    """The source's requested index when the destination can build it, else ``"auto"``."""
    if requested == "auto" or not dst.is_milvus:
        return requested
    from indexes.milvus import kinds

    try:
        kinds.translate(requested, dim, lite=dst.kind == "milvus-lite")
    except ValueError:
        logger.info("index %r has no counterpart at %s; the copy uses index='auto'", requested, dst)
        return "auto"
    return requested


def _open_destination(
    src: VectorCollection, dst: Location, index: str | None, overwrite: bool
) -> VectorCollection:
    info = src.info()
    if overwrite or not collection_exists(dst):
        requested = (
            index if index is not None else _index_for(dst, str(info.get("index_requested", "auto")), src.dim)
        )
        return create_collection(
            dst,
            src.dim,
            metric=src.metric,
            index=requested,
            fingerprint=src.fingerprint,
            memory_budget=info.get("memory_budget"),
            recall_target=float(info.get("recall_target", 0.95)),
            overwrite=overwrite,
            model_info=info.get("model_info"),
            text_fields=getattr(src, "text_index", None),  # the text index travels with the items
        )
    coll = open_collection(dst)
    mismatch = [
        f"{name} {theirs!r} (source: {ours!r})"
        for name, theirs, ours in (
            ("dim", coll.dim, src.dim),
            ("metric", coll.metric, src.metric),
            ("fingerprint", coll.fingerprint, src.fingerprint),
        )
        if theirs != ours
    ]
    if mismatch:
        coll.close()
        raise ValueError(
            f"destination {dst} already exists with {', '.join(mismatch)}: it is not a copy of this source; "
            "choose another destination or pass overwrite=True to replace it"
        )
    return coll


def copy_collection(
    source: str | os.PathLike[str] | Location,
    destination: str | os.PathLike[str] | Location,
    batch: int = 10_000,
    *,
    index: str | None = None,
    overwrite: bool = False,
    checkpoint: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
    verify: bool = True,
) -> CopyReport:
    """Copy every item of ``source`` into ``destination`` (created when missing); see the module doc.

    ``batch`` items are read and written at a time; ``index`` chooses the destination's index
    (default: the source's requested one when the destination can build it, else ``"auto"``);
    ``checkpoint`` items between commits; ``progress(done, total)`` is called after each batch.
    ``verify`` reads a local source whole and checks every checksum first (damaged vectors
    must not spread to the copy); a damaged source raises ``DamagedFileError`` naming the file.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, received {batch!r}")
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise ValueError(f"checkpoint must be an integer >= 1, received {checkpoint!r}")
    src_loc, dst_loc = parse_location(source), parse_location(destination)
    if str(src_loc) == str(dst_loc):
        raise ValueError(f"source and destination are the same location {src_loc}")
    _check_writes_ids(dst_loc)
    t0 = time.perf_counter()
    if verify and not src_loc.is_milvus:
        _verify_source(src_loc)
    with open_collection(src_loc, read_only=True) as src:
        src_ids = src.ids()  # [n] ascending
        with _open_destination(src, dst_loc, index, overwrite) as dst:
            have = dst.ids()
            extra = np.setdiff1d(have, src_ids, assume_unique=True)
            if extra.size:
                raise ValueError(
                    f"destination {dst_loc} holds {extra.size} id(s) the source {src_loc} lacks (e.g. "
                    f"{extra[:5].tolist()}): it is not a copy of this source; pass overwrite=True to start afresh"
                )
            todo = np.setdiff1d(src_ids, have, assume_unique=True)
            done, since_commit = int(have.size), 0
            if done:
                logger.info(
                    "%s already holds %d of %d items; copying the other %d",
                    dst_loc,
                    done,
                    src_ids.size,
                    todo.size,
                )
            for lo in range(0, todo.size, batch):
                ids = todo[lo : lo + batch]
                dst.add(src.vectors(ids), src.get(ids), ids=ids)  # type: ignore[call-arg]
                done += ids.size
                since_commit += ids.size
                if since_commit >= checkpoint:
                    dst.save()
                    since_commit = 0
                    logger.info("copied %d / %d items to %s", done, src_ids.size, dst_loc)
                if progress is not None:
                    progress(done, int(src_ids.size))
            next_id = src.info().get("next_id")
            reserve = getattr(dst, "reserve_ids", None)
            if next_id is not None and reserve is not None:
                reserve(int(next_id))  # the copy hands out no id the source ever used
    return CopyReport(
        source=str(src_loc),
        destination=str(dst_loc),
        total=int(src_ids.size),
        copied=int(todo.size),
        already_there=int(have.size),
        seconds=round(time.perf_counter() - t0, 3),
    )
