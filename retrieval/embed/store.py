"""Committed embedding work: shards on disk, the record of what is done, the collection built from them.

Layout of the state folder (``<collection>/embed``, see :func:`state_dir`)::

    state.json                 model fingerprint, dim, name and origin, which shards the collection holds
    shards/000000-image.npz    vectors [n, d] float32, keys, metadata (JSON), skipped keys + reasons
    shards/000001-text.npz
    shards/000002-remove.npz   keys + metadata of items pruned from the collection (``prune``)
    errors.jsonl               every input that was skipped, one JSON object a line

A shard is written atomically (temporary file, fsync, rename), so it is either whole or
absent: the shards on disk *are* the record of what is done. The collection is derived
from them: before saving added shards the state records an intent (the shards, the
collection's save counter and size before), so after a crash a re-run can tell whether the
collection saved them, and rebuilds it from the shards when it cannot tell. An image file
that changed on disk gets a new key, is embedded again and replaces its earlier version.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.fingerprint import check_fingerprint
from retrieval.embed.items import Item, SourceSkip
from retrieval.io import FileLock, atomic_write_bytes, atomic_write_text, remove_temporaries

logger = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^(\d{6})-(image|text|remove)\.npz$")


def state_dir(collection_path: str | Path) -> Path:
    """Where the embedding state of the collection at ``collection_path`` lives: its ``embed/``
    subfolder (``indexes`` keeps its own files beside it and leaves other folders alone)."""
    return Path(collection_path) / "embed"


class Shard:
    """One committed shard file (loaded lazily)."""

    def __init__(self, path: Path) -> None:
        match = _SHARD_RE.match(path.name)
        assert match is not None, path
        self.path = path
        self.number = int(match.group(1))
        self.modality = match.group(2)

    @property
    def name(self) -> str:
        return self.path.name

    def keys(self) -> tuple[list[str], list[str]]:
        """(embedded keys, skipped keys)."""
        with np.load(self.path, allow_pickle=False) as data:
            return data["keys"].tolist(), data["skip_keys"].tolist()

    def replaces(self) -> list[bool]:
        """Per embedded item: whether it replaces an earlier version of the same image file."""
        with np.load(self.path, allow_pickle=False) as data:
            n = len(data["keys"])
            return data["replaces"].tolist() if "replaces" in data.files else [False] * n

    def vectors_and_metadata(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        with np.load(self.path, allow_pickle=False) as data:
            texts = data["metadata"].tolist()
            # One parse of a JSON array instead of one call per item (same dicts, about twice as fast).
            return data["vectors"], json.loads("[" + ",".join(texts) + "]") if texts else []


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_) if values else np.zeros(0, dtype="<U1")


class EmbedState:
    """The state folder of one collection: shards, done keys, ingest record, errors file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shard_dir = root / "shards"
        self.state_path = root / "state.json"
        self.errors_path = root / "errors.jsonl"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(
            root / ".job.lock",
            busy=f"another embedding job is running on this collection (lock {root / '.job.lock'}): "
            "wait for it to finish",
        )
        remove_temporaries(self.shard_dir)  # left by a writer killed mid-write
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text(encoding="utf-8")) if self.state_path.exists() else {}
        )

    def close(self) -> None:
        """Release the job lock."""
        self._lock.close()

    def __enter__(self) -> EmbedState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- record -----------------------------------------------------------------------------
    def check_model(self, fingerprint: str, dim: int) -> None:
        """Refuse to mix shards of another model; remember this model on first use."""
        known = self.state.get("fingerprint")
        check_fingerprint(
            known,
            fingerprint,
            what=f"the embedding state {self.root}",
            fix="embed into a new collection, or delete the collection and its state folder to start over",
        )
        if known is None:
            self.state.update(fingerprint=fingerprint, dim=int(dim), ingested=[], intent=None)
            self.save_state()

    def record(self, **fields: Any) -> None:
        """Store extra facts (e.g. the model folder) in the state file."""
        if any(self.state.get(k) != v for k, v in fields.items()):
            self.state.update(fields)
            self.save_state()

    def save_state(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2, sort_keys=True) + "\n")

    def _claim_number(self) -> int:
        """The number of the next shard: above every shard on disk and every number handed out
        before (recorded in the state file), so a name is never reused even when the newest
        shard file was deleted; a name in ``ingested`` always means the same shard."""
        existing = self.shards()
        number = max(int(self.state.get("next_shard", 0)), existing[-1].number + 1 if existing else 0)
        self.state["next_shard"] = number + 1
        self.save_state()
        return number

    def shards(self) -> list[Shard]:
        found = [Shard(p) for p in self.shard_dir.iterdir() if _SHARD_RE.match(p.name)]
        return sorted(found, key=lambda s: s.number)

    def done_keys(self) -> dict[str, str]:
        """key -> "embedded" | "skipped" for every item already handled (and not pruned since)."""
        done: dict[str, str] = {}
        for shard in self.shards():
            keys, skipped = shard.keys()
            if shard.modality == "remove":
                for key in keys:
                    done.pop(key, None)
                continue
            done.update(dict.fromkeys(skipped, "skipped"))
            done.update(dict.fromkeys(keys, "embedded"))
        return done

    def write_removal(self, keys: set[str]) -> Shard | None:
        """Commit a removal shard for embedded items whose keys left the corpus (``prune``)."""
        metadata: dict[str, str] = {}
        for shard in self.shards():
            if shard.modality == "remove":
                continue
            with np.load(shard.path, allow_pickle=False) as data:
                for key, meta in zip(data["keys"].tolist(), data["metadata"].tolist()):
                    if key in keys:
                        metadata[key] = meta
        if not metadata:
            return None
        buffer = io.BytesIO()
        np.savez(
            buffer,
            vectors=np.zeros((0, 1), dtype=np.float32),
            keys=_str_array(list(metadata)),
            metadata=_str_array(list(metadata.values())),
            replaces=np.zeros(len(metadata), dtype=bool),
            skip_keys=_str_array([]),
            skip_records=_str_array([]),
        )
        path = self.shard_dir / f"{self._claim_number():06d}-remove.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return Shard(path)

    def write_shard(
        self,
        modality: str,
        items: Sequence[Item],
        vectors: np.ndarray,
        skipped: Sequence[tuple[Item, str, str]],
        replaces: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> Shard:
        """Commit one shard atomically; ``skipped`` holds (item, reason, detail); items whose key is in
        ``replaces`` supersede an earlier version of their file when added to the collection."""
        assert vectors.shape[0] == len(items), (vectors.shape, len(items))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            keys=_str_array([it.key for it in items]),
            replaces=np.array([it.key in replaces for it in items], dtype=bool),
            metadata=_str_array([json.dumps(it.metadata, sort_keys=True) for it in items]),
            skip_keys=_str_array([it.key for it, _, _ in skipped]),
            skip_records=_str_array(
                [
                    json.dumps(
                        {
                            "where": it.ref if it.modality == "image" else it.metadata.get("path"),
                            "modality": it.modality,
                            "reason": reason,
                            "detail": detail,
                        }
                    )
                    for it, reason, detail in skipped
                ]
            ),
        )
        path = self.shard_dir / f"{self._claim_number():06d}-{modality}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return Shard(path)

    # -- collection ---------------------------------------------------------------------------
    def sync_collection(
        self,
        collection_path: Path,
        index: str,
        fingerprint: str,
        dim: int,
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
    ) -> int:
        """Add every shard the collection does not hold yet; returns how many vectors were added.
        ``tuning_queries`` (see :meth:`indexes.Collection.set_tuning_queries`) are stored with them."""
        ingested = set(self.state.get("ingested", []))
        intent = self.state.get("intent")
        coll = open_or_create(collection_path, dim, index, fingerprint)
        try:
            if intent is not None:
                applied = _intent_applied(coll, intent)
                if applied is None:
                    intent = "rebuild"
                else:
                    if applied:
                        ingested |= set(intent["shards"])
                    self.state.update(ingested=sorted(ingested), intent=None)
                    self.save_state()
            elif len(coll) and not ingested:
                raise ValueError(
                    f"collection {collection_path} already holds {len(coll)} vectors that were not embedded "
                    f"from this state folder ({self.root}): choose a new output path"
                )
            if intent != "rebuild":
                pending = [s for s in self.shards() if s.name not in ingested]
                return self._add(coll, pending, ingested, tuning_queries) if pending else 0
        finally:
            coll.close()
        logger.warning("collection %s does not match its shards: rebuilding it from them", collection_path)
        return self._rebuild(collection_path, index, fingerprint, dim, tuning_queries)

    def _add(
        self,
        coll: Any,
        pending: list[Shard],
        ingested: set[str],
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
    ) -> int:
        """Add ``pending`` shards in order (an image flagged as replacing an earlier version of its file
        removes that version), then save once, recording the intent first so a crash is detectable."""
        count_before, version_before = len(coll), _version(coll)
        added = 0
        present: list[dict[str, Any]] = []  # items this ingest adds: stored once the save happened
        absent: list[int] = []  # ids this ingest removes: gone once the save happened
        for shard in pending:
            vectors, metadata = shard.vectors_and_metadata()
            if shard.modality == "remove":
                gone = _removed(coll, metadata)
                if len(gone):
                    coll.remove(gone)
                    absent += [int(i) for i in gone[:: max(1, len(gone) - 1)]]
                continue
            stale = _superseded(coll, [m for m, r in zip(metadata, shard.replaces()) if r])
            if len(vectors):
                ids = coll.add(vectors, metadata)
                added += len(vectors)
                for i in sorted({0, len(ids) - 1}):  # first and last item of the shard
                    present.append({"id": int(ids[i]), **_identity(metadata[i])})
            if len(stale):
                coll.remove(stale)
                absent += [int(i) for i in stale[:: max(1, len(stale) - 1)]]
        if tuning_queries is not None and len(coll):
            coll.set_tuning_queries(tuning_queries)  # before the save that may choose and tune the index
        if coll.needs_rebuild:
            coll.rebuild()
        self.state["intent"] = {
            "shards": [s.name for s in pending],
            "count_before": count_before,
            "count_after": len(coll),
            "version_before": version_before,
            "present": present,
            "absent": absent,
        }
        self.save_state()
        coll.save()
        self.state.update(ingested=sorted(ingested | {s.name for s in pending}), intent=None)
        self.save_state()
        return added

    def _rebuild(
        self,
        collection_path: Path,
        index: str,
        fingerprint: str,
        dim: int,
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
    ) -> int:
        from indexes import Collection

        with Collection.create(
            collection_path,
            dim,
            index=index,
            fingerprint=fingerprint,
            overwrite=True,
            model_info=self.state.get("model_info"),
        ) as coll:
            return self._add(coll, self.shards(), set(), tuning_queries)

    # -- outputs ------------------------------------------------------------------------------
    def write_errors(self, source_skips: Sequence[SourceSkip], current_keys: set[str]) -> int:
        """Rewrite the errors file: skips found in the source now, plus skipped items still in it."""
        lines = [
            json.dumps({"where": s.where, "modality": None, "reason": s.reason, "detail": s.detail})
            for s in source_skips
        ]
        for shard in self.shards():
            with np.load(shard.path, allow_pickle=False) as data:
                for key, record in zip(data["skip_keys"].tolist(), data["skip_records"].tolist()):
                    if key in current_keys:
                        lines.append(record)
        atomic_write_text(self.errors_path, "".join(line + "\n" for line in lines))
        return len(lines)

    def export_npy(self, out: Path) -> None:
        """Write clip-retrieval's layout: ``img_emb/img_emb_<i>.npy``, ``text_emb/text_emb_<i>.npy`` and
        ``metadata/metadata_<i>.parquet`` (rows aligned with ``img_emb_<i>``; with texts only, with
        ``text_emb_<i>``). With both modalities the caption rows go to ``text_metadata/``. Files
        already written are kept, so an incremental run only adds new ones."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = [s for s in self.shards() if s.modality != "remove"]
        has_images = any(s.modality == "image" for s in shards)
        counters = {"image": 0, "text": 0}
        for shard in shards:
            i = counters[shard.modality]
            counters[shard.modality] += 1
            if shard.modality == "image":
                emb_path, meta_path = (
                    out / "img_emb" / f"img_emb_{i}.npy",
                    out / "metadata" / f"metadata_{i}.parquet",
                )
            else:
                emb_path = out / "text_emb" / f"text_emb_{i}.npy"
                folder = "text_metadata" if has_images else "metadata"
                meta_path = out / folder / f"{folder}_{i}.parquet"
            if emb_path.exists() and meta_path.exists():
                continue
            vectors, metadata = shard.vectors_and_metadata()
            buffer = io.BytesIO()
            np.save(buffer, vectors)
            atomic_write_bytes(emb_path, buffer.getvalue())
            rows = [
                {"image_path": m.get("path"), **{k: v for k, v in m.items() if k != "path"}} for m in metadata
            ]
            table = (
                pa.Table.from_pylist(rows) if rows else pa.table({"image_path": pa.array([], pa.string())})
            )
            sink = io.BytesIO()
            pq.write_table(table, sink)
            atomic_write_bytes(meta_path, sink.getvalue())


def open_or_create(
    collection_path: Path,
    dim: int,
    index: str,
    fingerprint: str,
    model_info: dict[str, Any] | None = None,
) -> Any:
    """The collection at ``collection_path``, created (recording ``model_info``: where the model came
    from) when missing; another model's collection raises the fingerprint ``ValueError``."""
    from indexes import Collection

    path = Path(collection_path)
    if not path.exists():
        return Collection.create(path, dim, index=index, fingerprint=fingerprint, model_info=model_info)
    coll = Collection.open(path)
    try:
        check_fingerprint(
            coll.fingerprint,
            fingerprint,
            what=f"collection {path}",
            fix="embed with the model that made it, or choose a new output path",
        )
    except ValueError:
        coll.close()
        raise
    if coll.dim != dim:
        d = coll.dim
        coll.close()
        raise ValueError(
            f"collection {path} has dim {d}, the model embeds in dim {dim}: choose a new output path"
        )
    return coll


def _version(coll: Any) -> int | None:
    version = coll.info().get("version")
    return int(version) if version is not None else None


def _identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """The fields that tell one embedded item from another (an id alone could be reused by
    another writer after an unsaved add)."""
    return {k: metadata.get(k) for k in ("modality", "path", "caption", "image_id")}


def _holds(coll: Any, probe: dict[str, Any]) -> bool:
    try:
        stored = coll.get([int(probe["id"])])[0]
    except (KeyError, ValueError, IndexError):
        return False
    return _identity(stored) == {k: v for k, v in probe.items() if k != "id"}


def _has_id(coll: Any, item_id: int) -> bool:
    try:
        coll.get([int(item_id)])
    except (KeyError, ValueError, IndexError):
        return False
    return True


def _intent_applied(coll: Any, intent: dict[str, Any]) -> bool | None:
    """Whether the save of an interrupted ingest happened: True, False, or None when unsure.

    The collection itself tells: the first and last item of each added shard are stored (same
    id, same identity) and the removed ids are gone once the save happened, whatever another
    writer saved since. Intents recorded without those probes fall back on the save counter,
    then on the item count when it differs before and after."""
    present, absent = intent.get("present"), intent.get("absent")
    if present or absent:
        facts = [_holds(coll, p) for p in present or []] + [not _has_id(coll, i) for i in absent or []]
        if all(facts):
            return True
        if not any(facts):
            return False
        return None
    version, before = _version(coll), intent.get("version_before")
    if version is not None and before is not None:
        return version > before
    if intent["count_after"] == intent["count_before"]:
        return None
    if len(coll) == intent["count_after"]:
        return True
    return False if len(coll) == intent["count_before"] else None


def _superseded(coll: Any, replacing: list[dict[str, Any]]) -> np.ndarray:
    """Ids of the earlier image items with the paths of ``replacing`` (files changed since embedded)."""
    if not replacing or "path" not in coll.fields():
        return np.zeros(0, dtype=np.int64)
    probe = np.zeros((1, coll.dim), dtype=np.float32)  # [1, D]
    probe[0, 0] = 1.0
    found: list[np.ndarray] = []
    for meta in replacing:
        _, ids = coll.search(probe, 8, where={"modality": "image", "path": meta["path"]})  # [1, 8]
        found.append(ids[0][ids[0] >= 0])
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _removed(coll: Any, metadata: list[dict[str, Any]]) -> np.ndarray:
    """Ids of one stored item per entry of ``metadata`` (pruned items), matched on modality, path and,
    for captions, caption and image id (repeated pairs are identical, any one of them will do)."""
    probe = np.zeros((1, coll.dim), dtype=np.float32)  # [1, D]
    probe[0, 0] = 1.0
    chosen: set[int] = set()
    for meta in metadata:
        where: dict[str, Any] = {"modality": meta["modality"], "path": meta["path"]}
        if meta["modality"] == "text":
            where.update(caption=meta["caption"], image_id=meta["image_id"])
        _, ids = coll.search(probe, 16, where=where)  # [1, 16]
        free = [int(i) for i in ids[0] if i >= 0 and int(i) not in chosen]
        if free:
            chosen.add(max(free) if meta["modality"] == "text" else free[0])
            if meta["modality"] == "image":
                chosen.update(free)  # every copy of a removed image goes
    return np.array(sorted(chosen), dtype=np.int64)
