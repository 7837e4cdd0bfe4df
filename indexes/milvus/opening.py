"""Checks a Milvus collection is opened or created with: locations, JSON-able values, the schema."""

from __future__ import annotations

import json
from typing import Any

from indexes.location import Location, parse_location
from indexes.milvus.state import State

__all__ = ["check_schema", "json_dict", "milvus_location"]


def json_dict(what: str, value: Any) -> dict[str, Any] | None:
    """A JSON-able dict (copied), None, or ``ValueError`` naming what was received."""
    if value is None:
        return None
    try:
        copied = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a JSON-able dict, received {value!r} ({exc})") from exc
    if not isinstance(copied, dict):
        raise ValueError(f"{what} must be a dict, received {type(value).__name__}")
    return copied


def milvus_location(location: Any) -> Location:
    loc = parse_location(location)
    if not loc.is_milvus:
        raise ValueError(
            f"{loc} is a local folder: open it with indexes.Collection, or use indexes.open_collection for any location"
        )
    return loc


def check_schema(desc: dict[str, Any], state: State, loc: Location) -> None:
    fields = {f.get("name"): f for f in desc.get("fields", [])}
    vector = fields.get("vector")
    dim = int((vector or {}).get("params", {}).get("dim", -1))
    if "id" not in fields or "meta" not in fields or vector is None or dim != state.dim:
        raise ValueError(
            f"collection {loc} is inconsistent: its state says dim {state.dim} but the Milvus schema has fields "
            f"{sorted(fields)} with vector dim {dim}; restore it or rebuild it from the source vectors"
        )
