"""Settings as frozen dataclasses that round-trip through JSON.

Every config class derives from :class:`ConfigBase`: ``to_dict`` / ``from_dict``
(unknown keys are rejected by name), ``to_json`` / ``from_json`` and
``save`` / ``load`` of a JSON file. Factories take a config, never an argparse
namespace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigBase")


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn JSON values back into the field's declared type (tuples, nested configs)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:
            if arg is type(None):
                continue
            return _coerce(value, arg)
    if isinstance(annotation, type) and issubclass(annotation, ConfigBase) and isinstance(value, dict):
        return annotation.from_dict(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Shared JSON round-trip for the toolkit's config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict, received {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(fields)}: "
                "check the spelling or remove them"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(value, hints.get(name, Any)) for name, value in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (unknown names raise ``ValueError``)."""
        merged = {**self.to_dict(), **changes}
        return type(self).from_dict(merged)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON, atomically."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | os.PathLike[str]) -> C:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
