"""What a Milvus collection records about itself, kept as one JSON collection property.

The property ``siamese_retrieval.state`` holds the toolkit's view of the collection: the
format, dim, metric and model fingerprint (checked on every open), the next id to hand out,
the metadata fields seen, the requested and built index, the tuned search parameters, the
budgets, timestamps, a version counter bumped by each save, the token of the handle
currently allowed to write, and where the model came from (``model_info``). A second
property, ``siamese_retrieval.queries``, holds the tuning query sets when some were stored. The vectors and metadata themselves are rows of the Milvus
collection (``id``, ``vector``, ``meta``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["FORMAT", "FORMAT_VERSION", "QUERIES_KEY", "STATE_KEY", "State", "now"]

STATE_KEY = "siamese_retrieval.state"
QUERIES_KEY = "siamese_retrieval.queries"  # tuning query sets (see MilvusCollection.set_tuning_queries)
FORMAT = "siamese-retrieval/milvus"
FORMAT_VERSION = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class State:
    """The toolkit's record of one Milvus collection (saved and restored whole)."""

    dim: int  # vector dimension (also in the Milvus schema)
    metric: str  # "ip" or "l2"
    fingerprint: str | None  # the model that made the vectors; None: not recorded
    next_id: int  # the id the next add() hands out; ids below it are never reused
    fields: tuple[str, ...]  # metadata fields any item carried (what `where` may name)
    index_requested: str  # "auto" or a factory string
    index_spec: str  # the factory string of the index built
    params: dict[str, Any] = field(default_factory=dict)  # tuned search parameters and how they were found
    memory_budget: int | None = None  # bytes the index may use (None: no limit)
    recall_target: float = 0.95  # what search parameters are tuned to
    version: int = 0  # bumped by every save()
    created: str = ""  # UTC timestamps
    updated: str = ""
    writer: str | None = None  # token of the handle allowed to write (one writer at a time)
    model_info: dict[str, Any] | None = None  # where the model came from (as given to create)
    text_index: dict[str, Any] | None = (
        None  # the text fields' declaration (indexes.lexical.TextIndex.as_dict)
    )

    def to_properties(self) -> dict[str, str]:
        data = asdict(self)
        data["fields"] = sorted(self.fields)
        data.update(format=FORMAT, format_version=FORMAT_VERSION)
        return {STATE_KEY: json.dumps(data, sort_keys=True, separators=(",", ":"))}

    @classmethod
    def from_properties(cls, properties: dict[str, Any], where: str) -> State:
        """Read the state from collection properties; ``ValueError`` when it is missing or damaged."""
        text = (properties or {}).get(STATE_KEY)
        if text is None:
            raise ValueError(
                f"{where} is a Milvus collection but not one made by siamese-retrieval (no {STATE_KEY} "
                "property): choose another name, or copy its vectors into a new collection"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(
                f"{where}: property {STATE_KEY} is not valid JSON ({exc}); the collection is damaged"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"{where}: property {STATE_KEY} is not a {FORMAT} record; the collection is damaged"
            )
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{where} was written by a newer siamese-retrieval (format {data.get('format_version')}, this "
                f"version reads up to {FORMAT_VERSION}): upgrade siamese-retrieval"
            )
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["fields"] = tuple(values.get("fields") or ())
        values["params"] = dict(values.get("params") or {})
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(
                f"{where}: property {STATE_KEY} lacks entries ({exc}); the collection is damaged"
            ) from exc

    def updated_with(self, **changes: Any) -> State:
        return replace(self, **changes)
