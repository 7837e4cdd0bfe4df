"""Committed embedding work: shards on disk, the record of what is done, the collection built from them.

Layout of the state folder (``<collection>/embed`` for a local collection, the toolkit cache for
a Milvus one, or a folder of the user's choice; see :func:`state_dir`)::

    state.json                 model fingerprint, dim, name and origin, which shards the collection holds
    shards/000000-image.npz    vectors [n, d] float32, keys, metadata (JSON), skipped keys + reasons
    shards/000001-text.npz
    shards/000002-remove.npz   keys + metadata of items pruned from the collection (``prune``)
    errors.jsonl               every input that was skipped, one JSON object a line

A shard is written atomically (temporary file, fsync, rename), so it is either whole or
absent: the shards on disk *are* the record of what is done. The collection is derived
from them. Before a shard is written to the collection, ``state.json`` records its plan:
the ids its vectors get (consecutive, from the collection's next id) and the ids it removes.
A re-run after any interruption applies the recorded plans again, writing only the ids the
collection lacks and removing only the ids it still holds, so nothing is doubled or lost,
whether the collection dropped its unsaved changes (a local folder: the last save stands) or
kept every write the server acknowledged (Milvus). Once the collection has saved, the plans'
shards are marked ingested. An image file that changed on disk gets a new key, is embedded
again and replaces its earlier version.
"""

from __future__ import annotations

import hashlib
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


def state_dir(location: str | Path) -> Path:
    """Where the embedding state of the collection at ``location`` lives by default.

    A local collection keeps it in its ``embed/`` subfolder (``indexes`` keeps its own files
    beside it and leaves other folders alone), so it moves and is deleted with the collection.
    A Milvus collection has no folder of ours: its state lives in the toolkit cache
    (:func:`retrieval.paths.cache_dir`), under ``embed/`` and a folder named after the location
    without secrets (``milvus-HOST-PORT-NAME-<hash>``; the hash also covers the database), on the
    machine that runs the embedding. ``retrieval embed --state DIR`` chooses another folder,
    e.g. one on shared storage when several machines take turns embedding into one collection.
    """
    from indexes import parse_location

    loc = parse_location(location)
    if not loc.is_milvus:
        return Path(str(location)) / "embed"
    from retrieval.paths import cache_dir

    text = str(loc)
    if loc.kind == "milvus-lite":
        text = f"milvus-lite://{Path(str(loc.path)).expanduser().resolve()}/{loc.name}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    where = loc.host if loc.kind == "milvus" else Path(str(loc.path)).stem
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{loc.kind}-{where}-{loc.port or ''}-{loc.name}")
    return cache_dir("embed") / f"{slug.replace('--', '-')}-{digest}"


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
        location: Any,
        index: str,
        fingerprint: str,
        dim: int,
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> int:
        """Add every shard the collection does not hold yet; returns how many vectors were added.
        ``tuning_queries`` (see :meth:`indexes.Collection.set_tuning_queries`) are stored with them;
        ``model_info`` is recorded when the collection is created here."""
        ingested = set(self.state.get("ingested", []))
        plans: list[dict[str, Any]] = list(self.state.get("plans") or [])
        intent = self.state.get("intent")  # written by earlier versions of this module
        coll = open_or_create(location, dim, index, fingerprint, model_info)
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
            elif len(coll) and not ingested and not plans:
                raise ValueError(
                    f"collection {location} already holds {len(coll)} vectors that were not embedded "
                    f"from this state folder ({self.root}): choose a new output location, or pass the "
                    "state folder the collection was embedded with (--state)"
                )
            if intent != "rebuild":
                planned = {p["shard"] for p in plans}
                pending = [s for s in self.shards() if s.name not in ingested and s.name not in planned]
                return self._add(coll, plans, pending, ingested, tuning_queries) if plans or pending else 0
        finally:
            coll.close()
        logger.warning("collection %s does not match its shards: rebuilding it from them", location)
        return self._rebuild(location, index, fingerprint, dim, tuning_queries, model_info)

    def _add(
        self,
        coll: Any,
        plans: list[dict[str, Any]],
        pending: list[Shard],
        ingested: set[str],
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
    ) -> int:
        """Finish the recorded ``plans`` of an interrupted ingest, then plan and apply the ``pending``
        shards in order, then save once and mark them all ingested.

        Each shard's plan (the ids its vectors get, the ids it removes: earlier versions of changed
        image files, pruned items) is recorded in the state before anything is written, so applying
        it again after any interruption only writes what is missing: nothing is doubled or lost,
        whether the collection lost its unsaved changes (a local folder) or kept every acknowledged
        write (Milvus)."""
        added = 0
        if plans:
            present = coll.ids()  # one look at what an interrupted run left
            for plan in plans:
                path = self.shard_dir / plan["shard"]
                taken = _taken(coll, plan, path, present)
                if taken.size:  # another writer's items got planned ids the collection had lost
                    start = _next_free(coll, plans)
                    plan["moved"] = [
                        *plan.get("moved", []),
                        *([int(p), start + j] for j, p in enumerate(taken)),
                    ]
                    self.state["plans"] = plans
                    self.save_state()
                added += _apply(coll, plan, path, present, moved=False)
                unmoved = np.delete(_plan_ids(plan), [int(pos) for pos, _ in plan.get("moved", [])])
                present = np.setdiff1d(np.union1d(present, unmoved), np.asarray(plan["remove"], np.int64))
            for plan in plans:  # moved ids are past every plan's: added last, so ids stay ascending
                if plan.get("moved"):
                    added += _apply(coll, plan, self.shard_dir / plan["shard"], present, moved=True)
        for shard in pending:
            plan = _plan(coll, shard, plans)
            plans.append(plan)
            self.state["plans"] = plans
            self.save_state()
            added += _apply(coll, plan, shard.path, None)
        if tuning_queries is not None and len(coll):
            coll.set_tuning_queries(tuning_queries)  # before the save that may choose and tune the index
        if coll.needs_rebuild:
            coll.rebuild()
        coll.save()
        self.state.update(ingested=sorted(ingested | {p["shard"] for p in plans}), plans=[])
        self.save_state()
        return added

    def _rebuild(
        self,
        location: Any,
        index: str,
        fingerprint: str,
        dim: int,
        tuning_queries: dict[str, tuple[Any, Any]] | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> int:
        from indexes import create_collection

        self.state.update(ingested=[], plans=[], intent=None)
        self.save_state()
        with create_collection(
            location,
            dim,
            index=index,
            fingerprint=fingerprint,
            overwrite=True,
            model_info=model_info if model_info is not None else self.state.get("model_info"),
        ) as coll:
            return self._add(coll, [], self.shards(), set(), tuning_queries)

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


def declare_text_fields(location: Any, text_fields: Sequence[str] | None, stemming: str = "none") -> None:
    """Give the collection at ``location`` the text index over ``text_fields`` (a no-op when it has it)."""
    if not text_fields:
        return
    from indexes import open_collection
    from indexes.lexical import text_index_of

    wanted = text_index_of(list(text_fields), stemming)
    with open_collection(location) as coll:
        if getattr(coll, "text_index", None) != wanted:
            coll.set_text_fields(wanted)


def open_or_create(
    location: Any,
    dim: int,
    index: str,
    fingerprint: str,
    model_info: dict[str, Any] | None = None,
    text_fields: Sequence[str] | None = None,
    stemming: str = "none",
) -> Any:
    """Open the collection at ``location`` (any location :mod:`indexes` takes) for writing, or create it
    (with a text index over ``text_fields`` when given)."""
    from indexes import collection_exists, create_collection, open_collection

    if not collection_exists(location):
        extra: dict[str, Any] = (
            {"text_fields": list(text_fields), "stemming": stemming} if text_fields else {}
        )
        return create_collection(
            location, dim, index=index, fingerprint=fingerprint, model_info=model_info, **extra
        )
    coll = open_collection(location)
    try:
        check_fingerprint(
            coll.fingerprint,
            fingerprint,
            what=f"collection {location}",
            fix="embed with the model that made it, or choose a new output location",
        )
    except ValueError:
        coll.close()
        raise
    if coll.dim != dim:
        d = coll.dim
        coll.close()
        raise ValueError(
            f"collection {location} has dim {d}, the model embeds in dim {dim}: choose a new output location"
        )
    return coll


def _plan(coll: Any, shard: Shard, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """What adding ``shard`` does to the collection, decided before any of it is written: the first of
    the consecutive ids its vectors get (past the collection's next id and every ``earlier`` plan's)
    and the ids it removes."""
    vectors, metadata = shard.vectors_and_metadata()
    if shard.modality == "remove":
        remove = _removed(coll, metadata)
    else:
        remove = _superseded(coll, [m for m, r in zip(metadata, shard.replaces()) if r])
    return {
        "shard": shard.name,
        "first_id": _next_free(coll, earlier),
        "count": 0 if shard.modality == "remove" else len(vectors),
        "remove": [int(i) for i in remove],
    }


def _plan_ids(plan: dict[str, Any]) -> np.ndarray:
    """``[count]`` ids of a plan's vectors: consecutive from ``first_id``, except those ``moved``."""
    ids = np.arange(plan["first_id"], plan["first_id"] + plan["count"], dtype=np.int64)
    for position, new_id in plan.get("moved", []):
        ids[int(position)] = int(new_id)
    return ids


def _next_free(coll: Any, plans: list[dict[str, Any]]) -> int:
    """The first id past the collection's next id and every id ``plans`` gave out."""
    ends = [int(_plan_ids(p).max()) + 1 for p in plans if p["count"]]
    return max([int(coll.info()["next_id"]), *ends])


def _taken(coll: Any, plan: dict[str, Any], path: Path, present: np.ndarray) -> np.ndarray:
    """Positions of ``plan``'s vectors whose planned id the collection holds for another item: a
    local collection loses unsaved adds on a crash, and another writer may then be given their ids."""
    if not plan["count"]:
        return np.zeros(0, dtype=np.int64)
    ids = _plan_ids(plan)
    held = np.flatnonzero(np.isin(ids, present))
    if not held.size:
        return held
    _, metadata = Shard(path).vectors_and_metadata()
    stored = coll.get(ids[held])
    return np.asarray(
        [pos for pos, m in zip(held.tolist(), stored) if _identity(m) != _identity(metadata[pos])],
        dtype=np.int64,
    )


def _apply(
    coll: Any, plan: dict[str, Any], path: Path, present: np.ndarray | None, moved: bool | None = None
) -> int:
    """Write ``plan``: add the shard's vectors under the planned ids and remove the planned ids.
    With ``present`` (the ids the collection held before), only what is still missing is done.
    ``moved`` True / False adds only the vectors whose id was / was not moved (removals go with
    False); None does all."""
    added = 0
    if plan["count"]:
        vectors, metadata = Shard(path).vectors_and_metadata()
        ids = _plan_ids(plan)  # [n]
        keep = np.ones(len(ids), dtype=bool) if present is None else ~np.isin(ids, present)
        if moved is not None:
            is_moved = np.zeros(len(ids), dtype=bool)
            is_moved[[int(pos) for pos, _ in plan.get("moved", [])]] = True
            keep &= is_moved if moved else ~is_moved
        if keep.any():
            coll.add(vectors[keep], [m for m, k in zip(metadata, keep) if k], ids=ids[keep])
            added = int(keep.sum())
    if moved:
        return added
    remove = np.asarray(plan["remove"], dtype=np.int64)
    if present is not None:
        remove = np.intersect1d(remove, present)
    if remove.size:
        coll.remove(remove)
    return added


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
