"""Creating and opening a collection: the checks of what a user asks for, and one version read from disk.

:func:`new_manifest` checks the arguments of :meth:`indexes.Collection.create` and returns the
manifest of an empty collection; :func:`check_folder` refuses paths that are files or folders of
something else. :func:`read_version` opens what a manifest names: the trained template, every
segment (checking what is cheap to check, :meth:`indexes.segment.Segment.open`) and the agreement
of the item count; it refuses a manifest older than files beside it
(:func:`indexes.persist.newer_files`) before anything could delete them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from indexes import auto, checks, files, legacy, persist
from indexes.faiss_index import METRICS
from indexes.files import DamagedFileError
from indexes.limits import Limits
from indexes.persist import FORMAT, FORMAT_VERSION, MANIFEST
from indexes.segment import Segment
from indexes.template import Template

__all__ = ["check_folder", "new_manifest", "newer_hint", "read_version", "repair_hint"]


def repair_hint(path: Path) -> str:
    return f"run `retrieval check {path} --repair` (or Collection.verify(repair=True)) or restore a backup"


def newer_hint(path: Path) -> str:
    return (
        "restore the newest manifest.json if you have it, or run `retrieval check "
        f"{path} --repair` to keep this version (the newer files are deleted; their ids are never reused)"
    )


def new_manifest(
    dim: Any,
    metric: Any,
    index: Any,
    fingerprint: Any,
    memory_budget: Any,
    recall_target: Any,
    model_info: Any,
) -> tuple[dict[str, Any], Template]:
    """(manifest of an empty collection at version 0, its template); ``ValueError`` naming any bad argument."""
    dim = checks.check_int("dim", dim, 1)
    checks.check_creation(metric, METRICS, recall_target, fingerprint)
    budget = auto.parse_memory(memory_budget)
    if model_info is not None:
        try:
            model_info = json.loads(json.dumps(model_info, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model_info must be a JSON-able dict, received {model_info!r} ({exc})") from exc
        if not isinstance(model_info, dict):
            raise ValueError(f"model_info must be a dict, received {type(model_info).__name__}")
    requested = index.strip() if isinstance(index, str) else index
    spec = "Flat" if requested == "auto" else requested
    template = Template(spec, dim, metric)  # validates the spec
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": 0,
        "dim": dim,
        "metric": metric,
        "count": 0,
        "next_id": 0,
        "index_requested": requested,
        "index_spec": spec,
        "fingerprint": fingerprint,
        "model_info": model_info,
        "params": {},
        "memory_budget": budget,
        "recall_target": float(recall_target),
        "created": now,
        "updated": now,
        "segments": [],
        "template": None,
        "queries": None,
        "auto": None,
    }
    return manifest, template


def check_folder(path: Path, overwrite: bool) -> None:
    """Refuse to create a collection where a file, a non-empty folder of something else, or (without
    ``overwrite``) a collection is."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file; choose another path")
    if any(path.iterdir()):
        if not (path / MANIFEST).exists():
            raise FileExistsError(
                f"{path} exists, is not empty and is not a collection: choose an empty or new path"
            )
        if not overwrite:
            raise FileExistsError(f"collection {path} already exists: open it, or pass overwrite=True")


def read_version(
    path: Path, manifest: dict[str, Any], limits: Limits
) -> tuple[dict[str, Any], list[Segment], Template]:
    """(manifest as format 2, opened segments, template) of the version ``manifest`` describes."""
    if int(manifest["format_version"]) < 2:
        manifest = legacy.as_segments(path, manifest)
    dim, metric = int(manifest["dim"]), str(manifest["metric"])
    hint = repair_hint(path)
    newer, newest = persist.newer_files(path, manifest)
    if newer:
        raise DamagedFileError(
            path / MANIFEST, persist.describe_newer(manifest, newer, newest), newer_hint(path)
        )
    trained = None
    record = manifest.get("template")
    if record:
        file = path / record["file"]
        result = files.verify_file(file, record.get("digest"))
        if result:
            raise DamagedFileError(file, files.describe_damage(result), hint)
        trained = Template.read(manifest["index_spec"], dim, metric, file).trained
    template = Template(str(manifest["index_spec"]), dim, metric, trained)
    segments: list[Segment] = []
    try:
        for entry in manifest.get("segments") or []:
            segments.append(
                Segment.open(path, entry, dim, template, verify_bytes=limits.verify_on_open_bytes)
            )
        declared = manifest.get("lexical")
        for seg in segments:
            record = seg.entry.get("lexical")
            if declared and (not record or record.get("config") != declared):
                raise DamagedFileError(
                    seg.folder,
                    "the segment has no lexicon of the collection's text fields"
                    if not record
                    else f"its lexicon indexes {record['config'].get('fields')}, the collection {declared.get('fields')}",
                    hint,
                )
        count = sum(s.n_live for s in segments)
        if count != int(manifest["count"]):
            raise ValueError(
                f"collection {path} is inconsistent: manifest says {manifest['count']} items but its "
                f"segments hold {count}; {hint}"
            )
    except BaseException:
        for s in segments:
            s.close()
        raise
    return manifest, segments, template
