"""The embedding job: a corpus into an :class:`indexes.Collection`, streamed, batched, resumable.

``embed_corpus(model, source, collection_path, config)`` reads the corpus with the data
layer, skips every item already done, encodes the rest batch by batch (a ``DataLoader``
with workers, or a Ray Data actor pool) and commits the vectors in shards of
``config.shard_size`` to a state folder (``<collection>/embed`` for a local collection; for a
Milvus location the toolkit cache or ``config.state``, see :func:`retrieval.embed.store.state_dir`).
The collection is then extended from the new shards. Memory holds one shard of vectors
at a time, however large the corpus.

Killed at any point (even ``kill -9``), the same call finishes the job and gives the same
collection as an uninterrupted run; called on a finished job it does nothing; called after
files were added to the corpus it embeds only the new ones. Broken inputs are skipped,
counted by reason and listed in ``errors.jsonl`` in the state folder. A corpus of images without
captions, or of captions without images, is embedded as it is; one that gives nothing to embed, or
whose every item was skipped, raises :class:`NothingEmbeddedError` with the counts by reason.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import encoding
from retrieval.config import EmbedConfig
from retrieval.embed import engines
from retrieval.embed.items import Item, PairLike, caption_sample, corpus_items, read_source
from retrieval.embed.store import EmbedState, declare_text_fields, open_or_create, state_dir
from retrieval.encoding import pick_device

logger = logging.getLogger(__name__)
TUNING_CAPTIONS = 1_000  # captions encoded as tuning queries for an image-only collection
EXAMPLES = 3  # skipped inputs quoted in a summary or an error

# Skip codes of the items and the encoder, in words (readers give their reasons in words already).
SKIP_WORDS = {
    "missing_file": "image file missing",
    "decode_error": "image could not be decoded",
    "transform_error": "image could not be transformed",
    "encode_error": "refused by the model",
    "empty_caption": "empty caption",
}

__all__ = ["EmbedSummary", "NothingEmbeddedError", "embed_corpus", "recorded_model", "recorded_model_dir"]


def _counts_in_words(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {SKIP_WORDS.get(reason, reason)}" for reason, n in ordered)


class NothingEmbeddedError(ValueError):
    """A source gave nothing to embed, or every item of it was skipped; ``summary`` says what
    happened (``None`` when nothing was started)."""

    def __init__(self, message: str, summary: EmbedSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclasses.dataclass(frozen=True)
class EmbedSummary:
    """What one :func:`embed_corpus` call did."""

    collection_path: str  # the collection written (a folder or a Milvus location, without secrets)
    embedded: int  # items encoded by this call
    skipped: dict[str, int]  # reason -> items skipped by this call (decode_error, empty_caption, ...)
    already_done: int  # items found done (embedded or skipped) by an earlier call
    added: int  # vectors added to the collection by this call
    pruned: int  # items removed from the collection because they left the corpus (config.prune)
    errors_path: Path  # JSONL file listing every skipped input of the corpus
    state_path: Path  # folder with the committed shards
    npy_export: Path | None  # clip-retrieval style export folder, when asked for
    seconds: float  # wall time of the call
    examples: tuple[tuple[str, str], ...] = ()  # (where, why) of the first inputs skipped by this call

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        """One line of counts (skip reasons in words), then the first skipped inputs with why."""
        skipped = _counts_in_words(self.skipped) or "none"
        line = (
            f"embedded {self.embedded}, already done {self.already_done}, skipped {self.skipped_total} ({skipped}) "
            f"in {self.seconds:.1f}s -> {self.collection_path} (errors: {self.errors_path})"
        )
        # the reason often names the file again: say it once
        shown = [
            (where, why.replace(f" {where}:", ":").replace(f" {where}", "")) for where, why in self.examples
        ]
        return "\n".join([line, *(f"  skipped {where}: {why}" for where, why in shown)])


def embed_corpus(
    model: Any,
    source: Any,
    collection_path: str | Path,
    config: EmbedConfig | None = None,
    *,
    model_dir: str | Path | None = None,
) -> EmbedSummary:
    """Embed ``source`` with ``model`` into the collection at ``collection_path`` (a folder,
    ``milvus://HOST:PORT/NAME`` or ``milvus-lite://PATH.db/NAME``; see :mod:`indexes.location`).

    ``model`` is a :class:`retrieval.model.TwinEncoder` (or anything with ``image_transform``,
    ``image_features``, ``encode_texts``, ``fingerprint`` and ``embed_dim``); ``source`` is
    what :func:`retrieval.data.read_pairs` reads (manifest, image folder with sidecars,
    webdataset shards), a ``PairSet`` or a sequence of pairs. The collection is created when
    missing and records ``model.fingerprint()``; an existing collection made by another model
    raises ``ValueError``. Items carry metadata ``modality`` ("image" | "text"), ``path``,
    ``caption``, ``image_id`` and the pair's extra fields. The model's name (``model_dir``, else the
    ``source`` :func:`retrieval.model.load_model` set: a folder or ``hub_id@commit``) is recorded so
    searches can load it (:func:`recorded_model`): in the state folder and, with the fingerprint and
    where the model came from (hub id and revision, or folder and weights hash), in the
    ``model_info`` of a collection created here.
    """
    config = config or EmbedConfig()
    started = time.perf_counter()
    from indexes import parse_location

    location = parse_location(collection_path)
    fingerprint = str(model.fingerprint())
    dim = int(model.embed_dim)
    read_options = {
        "image_column": config.image_column,
        "caption_column": config.caption_column,
        "id_column": config.id_column,
        "split": config.split,
        "image_root": config.image_root,
    }
    shown = source if isinstance(source, (str, Path)) else type(source).__name__
    pairs, source_skips = read_source(source, **read_options)
    source_skips = [s for s in source_skips if s.costs(config.modality)]
    items, item_skips = corpus_items(pairs, config.modality)
    source_skips += item_skips
    if not items:
        raise NothingEmbeddedError(_nothing_to_embed(shown, pairs, source_skips, config.modality))
    source = getattr(model, "source", None)
    record = _model_record(model_dir, source)
    model_info: dict[str, Any] = dict(source.info()) if source is not None else {}
    model_info.update({key: record[key] for key in ("model", "model_dir") if key in record})
    # A collection made by another model is refused before any work is done.
    open_or_create(
        location, dim, config.index, fingerprint, model_info, config.text_fields, config.text_stemming
    ).close()
    declare_text_fields(location, config.text_fields, config.text_stemming)  # lexicons written with the items
    root = Path(config.state) if config.state else state_dir(location)
    with EmbedState(root) as state:  # one job per collection at a time
        state.check_model(fingerprint, dim)
        state.record(collection=str(location), model_info=model_info, **record)
        # Shards committed by an interrupted run go in first.
        added = state.sync_collection(location, config.index, fingerprint, dim, model_info=model_info)

        done = state.done_keys()
        pending = [it for it in items if it.key not in done]
        replaces = _changed_images(pending, done)
        pruned = _prune(state, items, done, config) if config.prune else 0
        skipped: collections.Counter[str] = collections.Counter(s.reason for s in source_skips)
        examples = [(s.where, s.detail) for s in source_skips[:EXAMPLES]]
        embedded = 0
        if pending:
            device = str(pick_device(config.device))
            logger.info(
                "embedding %d items (%d already done) on %s", len(pending), len(items) - len(pending), device
            )
            with _progress(len(pending), config.progress) as bar:
                batches = _batches(model, pending, config, device)
                for n_ok, failed in _commit(state, batches, config.shard_size, dim, replaces):
                    embedded += n_ok
                    skipped.update(reason for _, reason, _ in failed)
                    examples += [(it.ref, detail) for it, _, detail in failed[: EXAMPLES - len(examples)]]
                    bar.update(n_ok + len(failed))
        if pending or pruned:
            tuning = _caption_queries(model, pairs, config) if config.modality == "images" else None
            added += state.sync_collection(
                location, config.index, fingerprint, dim, tuning_queries=tuning, model_info=model_info
            )
        declare_text_fields(location, config.text_fields, config.text_stemming)  # after a rebuild too
        state.write_errors(source_skips, {it.key for it in items})
        export = Path(config.npy_export) if config.npy_export else None
        if export is not None:
            state.export_npy(export)
        summary = EmbedSummary(
            collection_path=str(location),
            embedded=embedded,
            skipped=dict(skipped),
            already_done=len(items) - len(pending),
            added=added,
            pruned=pruned,
            errors_path=state.errors_path,
            state_path=state.root,
            npy_export=export,
            seconds=time.perf_counter() - started,
            examples=tuple(examples),
        )
        if not embedded and not any(done.get(it.key) == "embedded" for it in items):
            raise NothingEmbeddedError(
                f"nothing of {shown} could be embedded: all {len(items)} items were skipped "
                f"({_counts_in_words(summary.skipped)}); the first: "
                + "; ".join(f"{where}: {why}" for where, why in summary.examples)
                + f" (every skipped input: {summary.errors_path})",
                summary,
            )
        return summary


def _nothing_to_embed(source: Any, records: Sequence[Any], skips: Sequence[Any], modality: str) -> str:
    """Why a source gave no item to embed, in words."""
    kinds = collections.Counter(
        "pair"
        if r.image is not None and r.caption is not None
        else ("image" if r.image is not None else "text")
        for r in records
    )
    held = ", ".join(
        f"{n} {what}"
        for n, what in (
            (kinds["pair"], "image-caption pairs"),
            (kinds["image"], "images without a caption"),
            (kinds["text"], "captions without an image"),
        )
        if n
    )
    message = f"nothing to embed from {source} with --modality {modality} (modality={modality!r})"
    if held:
        message += f": it holds {held}"
        other = {"texts": "images", "images": "texts"}.get(modality)
        if (other == "images" and kinds["image"]) or (other == "texts" and kinds["text"]):
            message += f"; --modality {other} or both embeds them"
    if skips:
        counts = collections.Counter(s.reason for s in skips)
        message += f"; skipped: {_counts_in_words(dict(counts))}; the first: " + "; ".join(
            f"{s.where}: {s.detail}" for s in skips[:EXAMPLES]
        )
    return message


def _caption_queries(
    model: Any, pairs: Sequence[PairLike], config: EmbedConfig
) -> dict[str, tuple[np.ndarray, None]] | None:
    """Vectors of a sample of the source's captions, stored with an image-only collection as the
    queries its index is tuned with (:meth:`indexes.Collection.set_tuning_queries`): recall is then
    measured on the text->image searches users send, which sit apart from the images in the space
    (the modality gap), rather than on image->image neighbours."""
    captions = caption_sample(pairs, TUNING_CAPTIONS)
    if not captions:
        return None
    device = str(pick_device(config.device))
    encoded = encoding.encode_texts(
        model, captions, batch_size=config.batch_size, device=device, runtime=config.runtime
    )
    return {"text->image": (encoded.vectors.numpy(), None)}


def _batches(
    model: Any, items: Sequence[Item], config: EmbedConfig, device: str
) -> Iterator[engines.EncodedBatch]:
    """Encoded batches of ``items`` (images first, then texts), each of one modality, in order."""
    if config.engine == "ray":
        with engines.ray_session(config.ray_address):
            yield from engines.ray_batches(
                model, items, config.batch_size, config.num_actors, device, config.runtime
            )
        return
    images = [it for it in items if it.modality == "image"]
    texts = [it for it in items if it.modality == "text"]
    if images:
        yield from engines.local_images(
            model,
            images,
            config.batch_size,
            config.num_workers,
            device,
            config.runtime,
            encoding.FeatureCache() if config.feature_cache else None,
        )
    if texts:
        yield from engines.local_texts(
            model,
            texts,
            config.batch_size,
            device,
            config.runtime,
            encoding.FeatureCache() if config.feature_cache else None,
        )


def _commit(
    state: EmbedState,
    batches: Iterator[engines.EncodedBatch],
    shard_size: int,
    dim: int,
    replaces: set[str],
) -> Iterator[tuple[int, list[tuple[Item, str, str]]]]:
    """Buffer batches and write a shard each time ``shard_size`` items of one modality are handled
    (or the modality changes); yields (embedded, failed) per batch once it is buffered."""
    buf_items: list[Item] = []
    buf_vectors: list[np.ndarray] = []
    buf_failed: list[tuple[Item, str, str]] = []
    modality = ""

    def flush() -> None:
        vectors = np.concatenate(buf_vectors) if buf_vectors else np.zeros((0, dim), np.float32)  # [n, D]
        state.write_shard(modality, buf_items, vectors, buf_failed, replaces)
        buf_items.clear()
        buf_vectors.clear()
        buf_failed.clear()

    for batch in batches:
        if batch.modality != modality and (buf_items or buf_failed):
            flush()
        modality = batch.modality
        buf_items.extend(batch.items)
        if len(batch.items):
            buf_vectors.append(batch.vectors)
        buf_failed.extend(batch.failed)
        if len(buf_items) + len(buf_failed) >= shard_size:
            flush()
        yield len(batch.items), batch.failed
    if buf_items or buf_failed:
        flush()


def _prune(state: EmbedState, items: Sequence[Item], done: dict[str, str], config: EmbedConfig) -> int:
    """Record the removal of embedded items of this run's modalities that are no longer in the corpus
    (an image whose file changed is replaced instead); returns how many."""
    modalities = {"images": ("image:",), "texts": ("text:",), "both": ("image:", "text:")}[config.modality]
    current = {it.key for it in items}
    refs = {it.ref for it in items if it.modality == "image"}
    gone = {
        key
        for key, how in done.items()
        if how == "embedded"
        and key.startswith(modalities)
        and key not in current
        and not (key.startswith("image:") and key[len("image:") :].rsplit(":", 2)[0] in refs)
    }
    return len(gone) if gone and state.write_removal(gone) is not None else 0


def _changed_images(pending: Sequence[Item], done: dict[str, str]) -> set[str]:
    """Keys of pending images whose file was embedded before under another key (it changed)."""
    before = {
        key[len("image:") :].rsplit(":", 2)[0]
        for key, how in done.items()
        if key.startswith("image:") and how == "embedded"
    }
    return {it.key for it in pending if it.modality == "image" and it.ref in before}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc="embed", dynamic_ncols=True)


def _model_record(model_dir: str | Path | None, source: Any) -> dict[str, Any]:
    """The fields naming the model: ``model`` (any name :func:`retrieval.model.load_model` takes)
    and ``model_dir`` when it is a folder."""
    record: dict[str, Any] = {}
    hub_id = getattr(source, "hub_id", None)
    if model_dir is not None and not (hub_id and str(model_dir).partition("@")[0] == hub_id):
        record["model"] = record["model_dir"] = str(Path(model_dir).resolve())
    elif source is not None:
        record["model"] = source.name
        if source.hub_id is None:
            record["model_dir"] = source.name
    return record


def _recorded(collection_path: str | Path) -> dict[str, Any]:
    path = state_dir(collection_path) / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def recorded_model_dir(collection_path: str | Path) -> Path | None:
    """The model folder recorded when the collection was embedded (``model_dir=``), if any: from the
    default state folder when it is on this machine, else from the collection's ``model_info``."""
    recorded = _recorded(collection_path).get("model_dir") or _collection_model_info(collection_path).get(
        "model_dir"
    )
    return Path(recorded) if recorded else None


def recorded_model(collection_path: str | Path) -> str | None:
    """The name of the model recorded when the collection was embedded (a folder, or a hub id
    pinned to the commit used: ``org/name@<commit>``), if any; loadable with ``load_model``.
    Read from the default state folder when it is on this machine, else from the collection."""
    state = _recorded(collection_path)
    recorded = state.get("model") or state.get("model_dir")
    if not recorded:
        info = _collection_model_info(collection_path)
        recorded = info.get("model") or info.get("model_dir")
    return str(recorded) if recorded else None


def _collection_model_info(collection_path: str | Path) -> dict[str, Any]:
    from indexes import collection_exists, open_collection

    if not collection_exists(collection_path):
        return {}
    with open_collection(collection_path, read_only=True) as coll:
        info = coll.info().get("model_info") or {}
    return info if isinstance(info, dict) else {}
