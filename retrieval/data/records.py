"""What a corpus holds: records (an image with a caption, an image alone, a caption alone), what was
skipped and why, and the view of its pairs that training and evaluation use.

* :class:`Record` -- one entry; :class:`Pair` is the record that has both an image and a caption.
* :class:`Skip` -- ``(where, reason, lost)``: something of the source that could not be used, and
  which modality it cost (``"image"``, ``"text"`` or ``"both"``).
* :class:`Corpus` -- what a reader returns: every record, every skip, the reader's name;
  :meth:`Corpus.pairs` is the :class:`PairSet` of its pairs, where unpaired records are listed as
  skipped (training and evaluation need both sides), and :meth:`Corpus.require_pairs` refuses a
  corpus without any pair with a message saying what it holds instead.
* :class:`Collector` -- the one place the rules of turning a source entry into records live
  (several captions per image, empty captions, captions that are not strings), shared by every reader.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Collector",
    "Corpus",
    "EmptyCorpusError",
    "Pair",
    "PairSet",
    "Record",
    "Skip",
    "UnpairedCorpusError",
    "describe_skips",
    "reason_kind",
]


@dataclasses.dataclass(frozen=True)
class Record:
    """One entry of a corpus: an image, a caption, or both.

    ``image`` is an absolute path or a reference (``tar://``, ``parquet://``, ``arrow://``), ``None``
    for a caption alone; ``caption`` is ``None`` for an image alone. ``image_id`` groups the captions
    of one image (a column / field the user named, else the image reference); a caption alone has
    one only when the source names it."""

    image: str | None
    caption: str | None
    image_id: str | None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str:
        """``"pair"``, ``"image"`` (an image alone) or ``"text"`` (a caption alone)."""
        if self.image is not None and self.caption is not None:
            return "pair"
        return "image" if self.image is not None else "text"


@dataclasses.dataclass(frozen=True)
class Pair(Record):
    """One image-caption pair. ``image`` is an absolute path or a reference (``tar://``, ``parquet://``,
    ``arrow://``)."""

    image: str
    caption: str
    image_id: str


class Skip(NamedTuple):
    """Something of a source that could not be used."""

    where: str  # file, row, line or member
    reason: str  # in words; the part before ": " is its kind (see reason_kind)
    lost: str  # what it cost: "image", "text", "both", or "none" (a remark: e.g. bad metadata ignored)


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, for counting: the text before the first ``": "``
    (``"invalid JSON: Expecting value"`` -> ``"invalid JSON"``)."""
    return reason.partition(": ")[0]


def describe_skips(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    """``"12 skipped (10 no caption, 2 invalid JSON); the first: WHERE: REASON; ..."``, or ``""``."""
    if not skipped:
        return ""
    counts = collections.Counter(reason_kind(reason) for _, reason in skipped)
    by_kind = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    first = "; ".join(f"{where}: {reason}" for where, reason in skipped[:examples])
    return f"{len(skipped)} skipped ({by_kind}); the first: {first}"


@dataclasses.dataclass
class PairSet:
    """Pairs read from a source, plus what was skipped as ``(where, reason)``."""

    pairs: list[Pair]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        return self.pairs[index]

    def skip_counts(self) -> collections.Counter[str]:
        """How many records were skipped for each kind of reason (:func:`reason_kind`)."""
        return collections.Counter(reason_kind(reason) for _, reason in self.skipped)

    def images(self) -> list[str]:
        """Unique image references in first-seen order (one per ``image_id``)."""
        seen: dict[str, str] = {}
        for pair in self.pairs:
            seen.setdefault(pair.image_id, pair.image)
        return list(seen.values())

    def image_ids(self) -> list[str]:
        """Unique image ids, aligned with :meth:`images`."""
        return list(dict.fromkeys(pair.image_id for pair in self.pairs))

    def captions(self) -> list[str]:
        """Every caption, one per pair (aligned with :meth:`text_to_image`)."""
        return [pair.caption for pair in self.pairs]

    def text_to_image(self) -> np.ndarray:
        """``[n_pairs]`` int64: caption ``i`` belongs to image ``images()[result[i]]``."""
        index = {image_id: i for i, image_id in enumerate(self.image_ids())}
        return np.asarray([index[pair.image_id] for pair in self.pairs], dtype=np.int64)


class EmptyCorpusError(ValueError):
    """A source yielded no image and no caption: names the reader tried and the first reasons."""


class UnpairedCorpusError(ValueError):
    """A source holds images and/or captions but no image-caption pair, where pairs are needed."""


@dataclasses.dataclass
class Corpus:
    """Everything a reader found in a source.

    Attributes:
        source: the source as given (a path or a pattern).
        reader: the reader that read it, in words (e.g. ``"JSON Lines manifest"``).
        records: pairs, images alone and captions alone, in source order.
        skipped: what could not be used, with why and what it cost.
        pair_skipped: the ``(where, reason)`` list of :meth:`pairs`: the skips, plus every record
            that is not a pair with why (``"no caption: ..."``), in source order.
        notes: what the reader noticed about the source as a whole (a column it fell back to, a
            column it lacks), shown in errors.
    """

    source: str
    reader: str
    records: list[Record]
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    pair_skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def counts(self) -> dict[str, int]:
        """Records of each kind: ``{"pair": n, "image": n, "text": n}`` (images alone, captions alone)."""
        counts = collections.Counter(record.kind for record in self.records)
        return {kind: counts.get(kind, 0) for kind in ("pair", "image", "text")}

    def describe(self) -> str:
        """What the corpus holds, in words (``"12 pairs, 45 images without a caption"``)."""
        counts = self.counts()
        parts = [
            f"{counts['pair']} image-caption pairs" if counts["pair"] else "",
            f"{counts['image']} images without a caption" if counts["image"] else "",
            f"{counts['text']} captions without an image" if counts["text"] else "",
        ]
        return ", ".join(p for p in parts if p) or "nothing"

    def skip_counts(self) -> collections.Counter[str]:
        """How many entries were skipped for each kind of reason (:func:`reason_kind`)."""
        return collections.Counter(reason_kind(skip.reason) for skip in self.skipped)

    def pairs(self) -> PairSet:
        """The pairs (records with both an image and a caption); every other record is listed in
        ``skipped`` with the reason it has no pair, after the reader's own skips, in source order."""
        return PairSet([r for r in self.records if isinstance(r, Pair)], list(self.pair_skipped))

    def require_pairs(self, purpose: str = "training and evaluation") -> PairSet:
        """:meth:`pairs`, or :class:`UnpairedCorpusError` when there is none, saying what the corpus
        holds instead and how to give it captions."""
        pairs = self.pairs()
        if len(pairs):
            return pairs
        first = "; ".join(f"{where}: {reason}" for where, reason in self.pair_skipped[:3])
        notes = "".join(f" {note}." for note in self.notes)
        raise UnpairedCorpusError(
            f"{self.source} ({self.reader}) has no image-caption pair to use for {purpose}: it holds "
            f"{self.describe()} (e.g. {first or 'nothing was skipped'}).{notes} Give the images captions (a "
            "same-name .txt beside each image, or a caption column named with --caption-column / "
            "caption_column=), or index the corpus as it is with `retrieval embed`"
        )


def _caption_list(value: Any) -> list[Any] | None:
    """A caption cell as a list of candidates; ``None`` when it is not a string or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                return [value]
            if isinstance(parsed, list):
                return parsed
        return [value]
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return list(value.tolist() if hasattr(value, "tolist") else value)
    return None


class Collector:
    """Accumulates records and skips with the same rules for every format."""

    def __init__(self, source: str, reader: str) -> None:
        self.source = source
        self.reader = reader
        self.records: list[Record] = []
        self.skipped: list[Skip] = []
        self.pair_skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """Remark on the source as a whole (shown in errors, logged by the reader)."""
        if text not in self.notes:
            self.notes.append(text)

    def skip(self, where: str, reason: str, lost: str = "both") -> None:
        """Record that ``where`` could not be used (``lost``: "image", "text" or "both")."""
        self.skipped.append(Skip(where, reason, lost))
        self.pair_skipped.append((where, reason))

    def add(
        self,
        where: str,
        image: str | None,
        captions: Any,
        image_id: Any,
        metadata: dict[str, Any],
        *,
        no_caption: str | None = "no caption",
        no_image: str | None = "no image",
    ) -> None:
        """Add what one source entry holds: ``image`` (a reference, or ``None``) with ``captions``
        (a string, a list of strings, a JSON list in a string, or ``None`` for none).

        An image with usable captions gives one :class:`Pair` per caption; an image without any gives
        an image record, listed in the pair view with ``no_caption`` as the reason; captions without
        an image give caption records, listed there with ``no_image`` (``None``: the caller has listed
        why already). Captions that are empty or not strings are skipped (they cost a text)."""
        texts = _caption_list(captions)
        explained = texts is None or bool(texts)  # the pair view lists an unusable caption already
        if texts is None:
            self.skip(
                where,
                f"caption is a {type(captions).__name__}, expected a string or a list of strings",
                "text",
            )
            texts = []
        kept: list[str] = []
        for n, text in enumerate(texts):
            text = text.strip() if isinstance(text, str) else text
            if not isinstance(text, str):
                self.skip(
                    f"{where} caption {n}", f"caption is a {type(text).__name__}, expected a string", "text"
                )
            elif not text:
                self.skip(f"{where} caption {n}" if len(texts) > 1 else where, "empty caption", "text")
            else:
                kept.append(text)
        given_id = str(image_id) if image_id not in (None, "") else None
        if image is not None:
            key = given_id if given_id is not None else image
            if kept:
                self.records.extend(Pair(image, text, key, dict(metadata)) for text in kept)
            else:
                self.records.append(Record(image, None, key, dict(metadata)))
                if not explained and no_caption is not None:
                    self.pair_skipped.append((where, no_caption))
            return
        if kept:
            self.records.extend(Record(None, text, given_id, dict(metadata)) for text in kept)
            if no_image is not None:
                self.pair_skipped.append((where, no_image))

    def result(self) -> Corpus:
        return Corpus(self.source, self.reader, self.records, self.skipped, self.pair_skipped, self.notes)
