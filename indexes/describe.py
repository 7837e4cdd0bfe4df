"""What a collection says about itself: :meth:`info` (the manifest and live figures), the segments,
and whether a rebuild would help.

:class:`Description` is a base of :class:`indexes.collection.Collection`; it only reads its state.
"""

from __future__ import annotations

from typing import Any

from indexes.persist import FORMAT_VERSION

__all__ = ["SCORE_CONVENTION", "Description"]

SCORE_CONVENTION = {"ip": "inner product (higher is better)", "l2": "-squared L2 distance (higher is better)"}


class Description:
    """Reports about a collection (a base of :class:`indexes.collection.Collection`)."""

    @property
    def segments(self) -> list[dict[str, Any]]:
        """One small dict per segment (name, rows, removed rows, id range), oldest first."""
        return [
            {
                "name": s.name,
                "rows": s.rows,
                "deleted": s.n_deleted_rows,
                "id_min": s.id_min,
                "id_max": s.id_max,
            }
            for s in self._segments
        ]

    @property
    def needs_rebuild(self) -> bool:
        """True when :meth:`rebuild` would help: many removed rows still stored, large growth since
        training, or (``index="auto"``) a choice that is due. ``save()`` handles auto collections."""
        return self._rebuild_reason() is not None

    def _rebuild_reason(self) -> str | None:
        n = len(self)
        stored = sum(p.rows for p in self._parts())
        dead = stored - n
        if dead > self._limits.tombstone_rebuild_fraction * max(stored, 1):
            return f"{dead} removed rows are still stored (compact() or rebuild() drops them)"
        if self._requested == "auto" and self._choice_due(n):
            return f"the index for {n} vectors is due to be chosen again (the next save does it)"
        trained_on = int(self._params.get("trained_on", 0))
        if self._template.needs_training and trained_on and n > self._limits.retrain_growth * trained_on:
            return f"index trained with {trained_on} vectors, collection now holds {n}"
        return None

    def info(self) -> dict[str, Any]:
        """Manifest fields plus live figures (count, segments, removed rows, memory, auto decision)."""
        parts = self._parts()
        stored = sum(p.rows for p in parts)
        on_disk = text_bytes = 0
        for entry in self._manifest.get("segments") or []:
            for _, digest in _files_of(entry):
                on_disk += int(digest["size"]) if digest else 0
            lexical = entry.get("lexical") or {}
            text_bytes += int((lexical.get("digest") or {}).get("size", 0))
        return {
            "path": str(self._path),
            "format_version": int(self._manifest.get("format_version", FORMAT_VERSION)),
            "version": self._manifest.get("version"),
            "count": len(self),
            "next_id": self._next_id,
            "dim": self._dim,
            "metric": self._metric,
            "score": SCORE_CONVENTION[self._metric],
            "fingerprint": self._fingerprint,
            "model_info": self.model_info,
            "index_spec": self._template.spec,
            "index_requested": self._requested,
            "index_kind": self._template.kind,
            "index_trained": self._template.ready or self._template.is_flat,
            "index_deferred": False,
            "params": dict(self._params),
            "auto": self._auto,
            "memory_budget": self._budget,
            "recall_target": self._recall_target,
            "fields": self.fields(),
            "text_index": None
            if self._lexical is None
            else {**self._lexical.as_dict(), "bytes_on_disk": text_bytes},
            "segments": len(self._segments),
            "tombstones": stored - len(self),
            "unsaved_items": 0 if self._buffer is None else self._buffer.n_live,
            "bytes_on_disk": on_disk,
            "memory_bytes": self._memory_estimate(),
            "needs_rebuild": self.needs_rebuild,
            "rebuild_reason": self._rebuild_reason(),
            "read_only": self._read_only,
            "unsaved_changes": self._dirty,
            "created": self._manifest.get("created"),
            "updated": self._manifest.get("updated"),
        }

    def _memory_estimate(self) -> int:
        """Bytes this handle keeps in memory beyond memory-mapped files: the buffer, the template, masks."""
        total = 0 if self._buffer is None else self._buffer.nbytes * 2  # vectors + index of unsaved items
        if self._template.trained is not None and self._template.is_ivf:
            total += self._template.nlist * self._dim * 4
        total += sum(s.rows // 8 + s.deleted.nbytes for s in self._segments if s.deleted.size)
        return int(total)


def _files_of(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    out = list((entry.get("files") or {}).items())
    for key in ("index", "deleted", "lexical"):
        if entry.get(key):
            out.append((entry[key]["file"], entry[key].get("digest")))
    return out
