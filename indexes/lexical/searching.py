"""Text search on a local collection: :class:`TextSearch`, a base of :class:`indexes.Collection`.

``search_text`` ranks the items whose indexed text fields hold the query's words by BM25 over the
whole collection (:mod:`indexes.lexical.bm25`), with the same ``where`` filters, padding and
return shapes as ``search``. ``set_text_fields`` declares (or changes, or drops) the text index and
commits: every segment gets a new lexicon built from its metadata, under a new generation, so a
reader of the previous version keeps the lexicons it opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes import checks, files, persist
from indexes.files import DamagedFileError
from indexes.lexical.bm25 import PartText, bm25_search
from indexes.lexical.config import TextIndex, text_index_of
from indexes.lexical.store import BufferLexicon, SegmentLexicon, write_lexicon_record
from indexes.lexical.tokens import query_terms

__all__ = ["TextSearch", "as_text_queries"]

MAX_RESULT_BYTES = 1 << 30  # scores and ids of one call (padding included) may take up to this


def as_text_queries(queries: Any) -> list[str]:
    """One str or a sequence of str -> a list of str; ``ValueError`` naming anything else."""
    if isinstance(queries, str):
        return [queries]
    if not isinstance(queries, Sequence):
        raise ValueError(f"text queries must be a str or a list of str, received {type(queries).__name__}")
    out = list(queries)
    for q in out:
        if not isinstance(q, str):
            raise ValueError(f"a text query must be a str, received {type(q).__name__} ({q!r:.60})")
    return out


class TextSearch:
    """Text index declaration and BM25 search (a base of :class:`indexes.collection.Collection`)."""

    _lexical: TextIndex | None

    @property
    def text_index(self) -> TextIndex | None:
        """The declaration of the collection's text index, or None when it has none."""
        return self._lexical

    @property
    def text_fields(self) -> list[str]:
        """The metadata fields ``search_text`` searches (empty without a text index)."""
        return list(self._lexical.fields) if self._lexical else []

    def _require_text_index(self) -> TextIndex:
        if self._lexical is None:
            raise ValueError(
                f"collection {self._path} has no text index: declare the metadata fields to search with "
                "set_text_fields(['title', 'tags']) (`retrieval text-index COLL title,tags`), or "
                "create it with text_fields=[...] (`retrieval embed ... --text-fields title,tags`)"
            )
        return self._lexical

    def search_text(
        self,
        queries: str | Sequence[str],
        k: int,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by BM25 for each text query: (scores float32 [n, k], ids int64 [n, k]), best first.

        ``queries`` is a str or a list of str, read as words (no query syntax). ``fields`` searches
        some of the indexed fields (default: all, read as one text). ``where`` filters as in
        :meth:`search`. Only items holding a query word come back; rows are padded with id -1 /
        score -inf. Scores are comparable between queries of one collection version only.
        """
        self._check_open()
        config = self._require_text_index()
        texts = as_text_queries(queries)
        k = checks.check_int("k", k, 1)
        positions = config.field_positions(fields)
        if len(texts) * k * 12 > MAX_RESULT_BYTES:
            raise ValueError(
                f"k={k} for {len(texts)} text queries would take {len(texts) * k * 12 / 2**30:.1f} GiB of results: "
                "ask for fewer"
            )
        parts = self._parts()
        match = None
        if where is not None and not (isinstance(where, dict) and not where):
            match = self._match(where, parts)
        text_parts = [
            PartText(
                self._lexicon_of(part, config),
                np.asarray(part.ids),
                part.live_mask(),
                None if match is None else match.mask(i, part),
            )
            for i, part in enumerate(parts)
        ]
        terms = query_terms(texts, config.tokenizer)
        return bm25_search(text_parts, terms, positions, k, config.k1, config.b)

    def _lexicon_of(self, part: Any, config: TextIndex) -> Any:
        """The lexicon of a segment, or of the buffer (caught up with its rows)."""
        if part is self._buffer:
            lex = part.lexicon
            if lex is None or lex.config != config:
                lex = part.lexicon = BufferLexicon(config, self._limits.lexicon_chunk_rows)

            def read(ids: np.ndarray) -> list[dict[str, Any]]:
                live = ~np.isin(ids, part.deleted)  # removed rows have no metadata left (and are masked)
                found = iter(part.meta.get(ids[live]))
                return [next(found) if ok else {} for ok in live]

            with lex.lock:
                lex.catch_up(np.asarray(part.ids), read)
            return lex
        lex = part.lexicon
        if lex is None or lex.config != config:
            raise DamagedFileError(
                Path(part.folder),
                "the segment has no lexicon of the collection's text fields"
                if lex is None
                else f"its lexicon indexes {list(lex.config.fields)}, the collection {list(config.fields)}",
                f"run `retrieval check {self._path} --repair` (or Collection.verify(repair=True))",
            )
        return lex

    def set_text_fields(
        self, text_fields: Sequence[str] | TextIndex | None, stemming: str | None = None
    ) -> None:
        """Declare the metadata fields of the text index (None: drop it) and commit.

        ``stemming`` "porter" reads English words by their stems. Every segment's lexicon is built
        anew from its metadata (this costs a pass over the collection's metadata); unsaved changes
        are saved first.
        """
        self._check_open(write=True)
        new = text_index_of(text_fields, stemming)
        if new == self._lexical:
            return
        if self._dirty:
            self.save()
        version = int(self._manifest.get("version", 0)) + 1
        created: list[Path] = []
        opened: list[SegmentLexicon] = []
        before = list(self._segments)
        out = []
        try:
            with files.storage_errors(self._path, "build the text index"):
                for seg in before:
                    entry = {k: v for k, v in seg.entry.items() if k != "lexical"}
                    lexicon = None
                    if new is not None:
                        record = write_lexicon_record(
                            seg.folder, new, version, seg.rows, self._limits.lexicon_chunk_rows
                        )
                        created.append(seg.folder / record["file"])
                        entry["lexical"] = record
                        lexicon = SegmentLexicon.open(seg.folder, record, seg.rows)
                        opened.append(lexicon)
                    out.append(seg.with_lexicon(lexicon, entry))
                for seg in out:
                    persist.fsync_dir(seg.folder)
                previous = self._lexical
                self._lexical = new
                try:
                    self._commit(self._manifest_for(version, out), previous=self._manifest)
                except BaseException:
                    self._lexical = previous
                    raise
        except BaseException:
            for lex in opened:
                lex.close()
            for path in created:
                persist.remove_file(path)
            raise
        for seg in before:
            if seg.lexicon is not None:
                seg.lexicon.close()
        self._segments = out
        if self._buffer is not None:
            self._buffer.lexical = new
            self._buffer.lexicon = None
