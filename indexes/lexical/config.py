"""What a collection's text index covers and how it reads words: :class:`TextIndex`, and the text of a field.

A text index is declared per collection (``Collection.create(..., text_fields=["title", "tags"])``
or :meth:`indexes.Collection.set_text_fields`) and recorded in its manifest; every segment's
lexicon is built with exactly this declaration, so a manifest whose segments disagree with it is
damaged (``retrieval check`` says so and a repair rebuilds them from the metadata).

Words are read by SQLite FTS5's ``unicode61`` tokenizer with ``remove_diacritics 2`` (case folded,
diacritics removed: "Café" and "cafe" are one word; letters and digits of every script are word
characters, everything else separates words), optionally followed by the ``porter`` stemmer
("running" and "runs" become "run"; English only).

The text of a metadata field is its string; a number is written out (``4411`` is the word
"4411"); a list contributes each of its strings and numbers (tags); booleans, nulls and nested
objects contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMAT_VERSION", "STEMMERS", "TextIndex", "field_text", "text_index_of"]

FORMAT_VERSION = 1  # of the lexicon files (indexes.lexical.store)
STEMMERS = ("none", "porter")
BASE_TOKENIZER = "unicode61 remove_diacritics 2"
MAX_FIELDS = 32  # text fields one collection may index


@dataclass(frozen=True)
class TextIndex:
    """The declaration of a collection's text index (kept in its manifest, JSON round-trip)."""

    fields: tuple[str, ...]  # metadata fields whose text is indexed, in this order
    stemming: str = "none"  # "none" | "porter" (English stemming after unicode61)
    k1: float = 1.2  # BM25 term-frequency saturation (SQLite FTS5's bm25() default)
    b: float = 0.75  # BM25 length normalisation (SQLite FTS5's bm25() default)

    def __post_init__(self) -> None:
        fields = self.fields
        if isinstance(fields, str) or not isinstance(fields, (list, tuple)):
            raise ValueError(
                f"text_fields must be a list of metadata field names, received {type(fields).__name__} "
                f"{fields!r}: e.g. text_fields=['title', 'tags']"
            )
        if not fields:
            raise ValueError(
                "text_fields is empty: name at least one metadata field, or pass None for no text index"
            )
        for name in fields:
            if not isinstance(name, str) or not name or '"' in name:
                raise ValueError(
                    f"text field {name!r} is not a metadata field name: names are non-empty strings without "
                    'double quotes (")'
                )
        if len(set(fields)) != len(fields):
            dup = sorted({f for f in fields if fields.count(f) > 1})
            raise ValueError(f"text_fields names {dup} more than once: name each field once")
        if len(fields) > MAX_FIELDS:
            raise ValueError(f"text_fields names {len(fields)} fields, at most {MAX_FIELDS} are indexed")
        object.__setattr__(self, "fields", tuple(fields))
        if self.stemming not in STEMMERS:
            raise ValueError(f"stemming must be one of {list(STEMMERS)}, received {self.stemming!r}")
        for name, value, low in (("k1", self.k1, 0.0), ("b", self.b, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"BM25 {name} must be a finite number, received {value!r}")
            if value < low or (name == "b" and value > 1):
                raise ValueError(
                    f"BM25 {name} must be {'in [0, 1]' if name == 'b' else '>= 0'}, received {value!r}"
                )
        object.__setattr__(self, "k1", float(self.k1))
        object.__setattr__(self, "b", float(self.b))

    @property
    def tokenizer(self) -> str:
        """The FTS5 ``tokenize`` option words are read with."""
        return f"porter {BASE_TOKENIZER}" if self.stemming == "porter" else BASE_TOKENIZER

    def field_positions(self, fields: Sequence[str] | None) -> list[int]:
        """Positions of ``fields`` (None: all) among the indexed fields; ``ValueError`` naming an unknown one."""
        if fields is None:
            return list(range(len(self.fields)))
        if isinstance(fields, str):
            fields = [fields]
        out = []
        for name in fields:
            if name not in self.fields:
                raise ValueError(
                    f"field {name!r} is not in the text index (it covers {list(self.fields)}): search those, or "
                    "index it too with set_text_fields([...]) (`retrieval text-index COLL FIELD[,FIELD]`)"
                )
            if self.fields.index(name) not in out:
                out.append(self.fields.index(name))
        if not out:
            raise ValueError(f"no field to search: name some of {list(self.fields)}")
        return sorted(out)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "stemming": self.stemming,
            "tokenizer": self.tokenizer,
            "k1": self.k1,
            "b": self.b,
            "format_version": FORMAT_VERSION,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TextIndex:
        """From :meth:`as_dict` output; unknown keys are refused by name (``tokenizer`` and
        ``format_version`` are derived and checked)."""
        known = {"fields", "stemming", "k1", "b", "tokenizer", "format_version"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown text index key(s) {unknown}; expected some of {sorted(known)}")
        version = int(values.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"the text index has format version {version}, this library reads up to {FORMAT_VERSION}: "
                "upgrade the indexes package"
            )
        out = cls(
            tuple(values["fields"]),
            values.get("stemming", "none"),
            values.get("k1", 1.2),
            values.get("b", 0.75),
        )
        if "tokenizer" in values and values["tokenizer"] != out.tokenizer:
            raise ValueError(f"text index tokenizer {values['tokenizer']!r} is not {out.tokenizer!r}")
        return out


def text_index_of(
    text_fields: Sequence[str] | TextIndex | None, stemming: str | None = None
) -> TextIndex | None:
    """``text_fields`` as given to ``create`` / ``set_text_fields`` -> a :class:`TextIndex` (None: none)."""
    if text_fields is None:
        if stemming not in (None, "none"):
            raise ValueError(f"stemming={stemming!r} needs text_fields: name the fields to index")
        return None
    if isinstance(text_fields, TextIndex):
        if stemming is not None and stemming != text_fields.stemming:
            raise ValueError("give stemming inside the TextIndex, not beside it")
        return text_fields
    if isinstance(text_fields, str):
        text_fields = [f.strip() for f in text_fields.split(",") if f.strip()]
    return TextIndex(tuple(text_fields), stemming or "none")


def field_text(value: Any) -> str:
    """The text a metadata value contributes (see the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, (list, tuple)):
        return "\n".join(
            t for t in (field_text(v) for v in value if not isinstance(v, (list, tuple, dict))) if t
        )
    return ""
