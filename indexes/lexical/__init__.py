"""The text index of a collection: BM25 over chosen metadata fields, kept in step with its segments.

>>> import numpy as np, tempfile
>>> from indexes import Collection
>>> with tempfile.TemporaryDirectory() as tmp:
...     with Collection.create(tmp + "/c", dim=2, index="Flat", text_fields=["title"]) as coll:
...         ids = coll.add(np.eye(2, dtype=np.float32), [{"title": "Café crème"}, {"title": "SKU 4411-B"}])
...         scores, found = coll.search_text("cafe", k=2)
...     print(found.tolist())
[[0, -1]]

Design: every segment has its own immutable lexicon file (the postings of its rows, written when the
segment is written: :func:`indexes.segment._new_entry`), recorded with its checksum in the
segment's manifest entry. So the storage contracts hold for text as for vectors: a save writes
the lexicon of the new segment only; the manifest is the commit point; merges rebuild the lexicon
of what they write; removed rows are masked by the deletion records; ``retrieval check`` verifies
each lexicon against its checksum and against the segment's metadata, and a repair rebuilds it
from the metadata; a reader keeps the files of the version it opened. One collection-wide FTS
table would have had to be rewritten (a whole-collection save) or mutated in place (no commit
point, no checksum, readers seeing changes of later versions).

Per-segment postings do not give per-segment BM25 statistics: SQLite FTS5's ``bm25()`` would count
documents per table, so the same item would score differently depending on its segment. Scores
are therefore computed by :mod:`indexes.lexical.bm25` (BM25 as Lucene computes it) over the statistics of
the whole collection (live items only): a score does not depend on the segmenting, and saves,
merges and reopening change none.

Modules: ``config`` (:class:`TextIndex`: fields, stemming; the text of a value), ``tokens`` (FTS5's
tokenizer: ``unicode61 remove_diacritics 2``, optionally ``porter``), ``store`` (lexicon files and
the buffer's lexicon), ``bm25`` (scoring), ``searching`` (``Collection.search_text`` and
``set_text_fields``).
"""

from __future__ import annotations

from indexes.lexical.config import STEMMERS, TextIndex, field_text, text_index_of

__all__ = ["STEMMERS", "TextIndex", "field_text", "text_index_of"]
