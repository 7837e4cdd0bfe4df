"""Pair scores: the image-caption cosine of every pair of a corpus, streamed and resumable, then the
corpus filtered by it and a histogram of the scores.

LAION was built this way: every image-caption pair scored with CLIP, the pairs below a cosine
threshold dropped (Schuhmann et al., 2022). :func:`score_pairs` reads the corpus with the one reader
(:func:`retrieval.data.read_corpus`), encodes each image once and every caption through the one
inference path (the embed engines, :mod:`retrieval.embed.engines`), and writes one row per pair to
a Parquet file: ``image``, ``caption``, ``image_id``, ``score`` and the pair's metadata.

Resumable like ``embed``, with its machinery (:class:`retrieval.embed.store.EmbedState`): scores are
committed to a state folder (``<out>.state/`` by default) in atomic shards of about ``chunk_size`` pairs,
each pair named by a key of its caption, its image reference and the image file's size and
modification time. Killed at any point, the same call scores only what is missing; after files were
added to the corpus, only the new pairs; after an image file changed, its pairs again. The state
records the model: scores of another model are refused (choose another ``--state`` or delete it).
The images stream through one decoding pipeline (each image once, however many captions it has);
memory holds the vectors of one shard's pairs, however large the corpus. Images that cannot be decoded skip
their pairs, counted by reason and listed in the state's ``errors.jsonl``.

``keep_above`` / ``keep_top_fraction`` also write the kept pairs in the corpus's own format
(:mod:`retrieval.corpus.filtered`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.columns import ColumnTypes
from retrieval.corpus.config import ScoreConfig
from retrieval.corpus.progress import progress_bar
from retrieval.embed.items import Item, image_items, normal_ref, read_source, text_items
from retrieval.io import atomic_path

__all__ = ["ScoreResult", "histogram_edges", "score_pairs", "state_folder"]

FIXED = ("image", "caption", "image_id", "score")


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """What :func:`score_pairs` did."""

    out: Path  # the scores (Parquet)
    pairs: int  # pairs of the corpus
    scored: int  # pairs scored by this call
    already_done: int  # pairs found scored by an earlier call
    skipped: dict[str, int]  # reason -> pairs without a score
    threshold: float | None  # the cut of the filter (keep_above, or the score at keep_top_fraction)
    kept: int | None  # pairs kept by the filter
    filtered: Path | None  # the filtered corpus
    plot: Path | None  # the histogram
    state: Path  # the state folder (shards, errors.jsonl)
    quantiles: dict[str, float]  # of the scores
    seconds: float

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items()) or "none"
        lines = [
            f"scored {self.scored} pairs, already done {self.already_done}, skipped {sum(self.skipped.values())} "
            f"({skipped}) in {self.seconds:.1f}s -> {self.out} (errors: {self.state / 'errors.jsonl'})",
            "score " + ", ".join(f"{name} {value:.4f}" for name, value in self.quantiles.items()),
        ]
        if self.kept is not None and self.threshold is not None:
            scored = self.pairs - sum(self.skipped.values())
            lines.append(
                f"kept {self.kept} of {scored} pairs (cosine >= {self.threshold:.4f}) -> {self.filtered}"
            )
        if self.plot is not None:
            lines.append(f"histogram: {self.plot}")
        return "\n".join(lines)


def state_folder(out: str | Path) -> Path:
    """The default state folder of a scores file: ``scores.parquet`` -> ``scores.state/``."""
    out = Path(out)
    return out.with_name(out.stem + ".state")


@dataclasses.dataclass(frozen=True)
class _Pair:
    record: Any  # the corpus record (image, caption, image_id, metadata)
    key: str  # identity of the scored content
    image: Item | None  # the image item (None: its file is missing)
    text: Item  # the caption item


def _pairs(records: Sequence[Any]) -> list[_Pair]:
    """The pairs of ``records`` with their identity keys (a caption's key, plus its image's; an image
    whose file is missing has no item)."""
    pairs = [r for r in records if r.image is not None and r.caption is not None]
    images, _ = image_items(pairs)
    by_ref = {item.ref: item for item in images}
    texts, _ = text_items(pairs)
    out = []
    with_text = [r for r in pairs if str(r.caption).strip()]
    assert len(with_text) == len(texts), (len(with_text), len(texts))
    for record, text in zip(with_text, texts):
        image = by_ref.get(normal_ref(str(record.image)))
        key = f"pair:{text.key}:{image.key if image is not None else 'missing'}"
        meta = {"path": text.metadata.get("path"), "caption": text.ref}
        out.append(_Pair(record, key, image, Item(key, "text", text.ref, meta)))
    return out


def score_pairs(
    model: Any,
    source: Any,
    out: str | Path,
    config: ScoreConfig | None = None,
    *,
    state: str | Path | None = None,
    filtered: str | Path | None = None,
    plot: str | Path | bool | None = True,
) -> ScoreResult:
    """Score every image-caption pair of ``source`` with ``model`` into ``out`` (Parquet).

    ``source`` is what :func:`retrieval.data.read_corpus` reads (read with ``config``'s column
    options), a ``Corpus`` or a ``PairSet``; ``model`` anything :mod:`retrieval.encoding` encodes with
    (a :class:`~retrieval.model.TwinEncoder`, a transformers CLIP/SigLIP loaded by
    :func:`~retrieval.model.load_model`). ``state``: the state folder (default :func:`state_folder`).
    ``filtered``: where the kept pairs go when ``config`` filters (default beside ``out``,
    :func:`retrieval.corpus.filtered.default_path`). ``plot``: the histogram PNG (``True``: ``out``
    with ``.png``; ``None``: none). Raises :class:`~retrieval.data.UnpairedCorpusError` when the
    source holds no pair.
    """
    from retrieval.embed.store import EmbedState

    config = config or ScoreConfig()
    started = time.perf_counter()
    out = Path(out)
    if isinstance(source, (str, os.PathLike)):
        from retrieval.data import read_corpus

        source = read_corpus(source, **config.read_options())
    reader = str(getattr(source, "reader", "records"))
    shown = getattr(source, "source", type(source).__name__)
    records, source_skips = read_source(source)
    pairs = _pairs(records)
    if not pairs:
        from retrieval.data import UnpairedCorpusError

        raise UnpairedCorpusError(
            f"{shown} has no image-caption pair to score ({len(records)} records, none with both an image and "
            "a caption): give the images captions, or a caption column with --caption-column"
        )
    root = Path(state) if state is not None else state_folder(out)
    with EmbedState(root) as st:
        st.check_model(str(model.fingerprint()), 1)
        st.record(source=str(shown), out=str(out))
        done = st.done_keys()
        pending = [p for p in pairs if p.key not in done]
        missing = [p for p in pending if p.image is None]
        todo = [p for p in pending if p.image is not None]
        if missing:  # pairs whose image file is gone: recorded as skipped, like a broken image
            st.write_shard(
                "text",
                [],
                np.zeros((0, 1), np.float32),
                [
                    (p.text, "missing_file", f"image file not found: {p.text.metadata['path']}")
                    for p in missing
                ],
            )
        with progress_bar(len(todo), config.progress, "score", "pair") as bar:
            scored = _score(model, todo, config, st, bar)
        # a missing image is in the shards already, one skip per pair
        st.write_errors([s for s in source_skips if s.costs("both")], {p.key for p in pairs})
        scores, reasons = _read_scores(st, {p.key for p in pairs})
    skipped = dict(collections.Counter(reasons.values()))
    values = np.array([scores[p.key] for p in pairs if p.key in scores], dtype=np.float32)
    _write_scores(out, pairs, scores)
    threshold, kept, filtered_path = None, None, None
    if config.filters and len(values):
        from retrieval.corpus.filtered import default_path, write_filtered

        threshold = _cut(values, config)
        keep = [p for p in pairs if p.key in scores and scores[p.key] >= threshold]
        if config.keep_top_fraction is not None:  # exactly the asked share, best first, ties by order
            keep = sorted(keep, key=lambda p: -scores[p.key])[
                : math.ceil(config.keep_top_fraction * len(values))
            ]
            keep_keys = {p.key for p in keep}
            keep = [p for p in pairs if p.key in keep_keys]
        filtered_path = Path(filtered) if filtered is not None else default_path(out, reader)
        write_filtered([(p.record, scores[p.key]) for p in keep], filtered_path, reader)
        kept = len(keep)
    plot_path = None
    if plot not in (None, False) and len(values):
        plot_path = out.with_suffix(".png") if plot is True else Path(plot)
        _histogram(values, plot_path, threshold, config.bins, kept)
    return ScoreResult(
        out=out,
        pairs=len(pairs),
        scored=scored,
        already_done=len(pairs) - len(pending),
        skipped=skipped,
        threshold=threshold,
        kept=kept,
        filtered=filtered_path,
        plot=plot_path,
        state=root,
        quantiles=_quantiles(values),
        seconds=time.perf_counter() - started,
    )


def _score(model: Any, pairs: list[_Pair], config: ScoreConfig, state: Any, bar: Any) -> int:
    """Score ``pairs`` and commit a shard each time ``chunk_size`` pairs are handled; returns how many
    were scored. The images stream through one decoding pipeline, each image once (its pairs follow
    it); the captions of a shard's pairs are encoded when the shard is committed."""
    from retrieval.embed import engines
    from retrieval.encoding import pick_device

    device = str(pick_device(config.device))
    by_image: dict[str, list[_Pair]] = {}
    for pair in pairs:
        assert pair.image is not None
        by_image.setdefault(pair.image.key, []).append(pair)
    images = [group[0].image for group in by_image.values()]
    ready: list[tuple[_Pair, np.ndarray]] = []  # pairs whose image is encoded, with its vector
    failed: list[tuple[Item, str, str]] = []
    scored = 0

    def commit() -> None:
        nonlocal scored
        ok, vectors, text_failed = _with_captions(model, ready, config, device)
        state.write_shard("text", [p.text for p in ok], vectors, failed + text_failed)
        scored += len(ok)
        bar.update(len(ready) + len(failed))
        ready.clear()
        failed.clear()

    for batch in engines.local_images(model, images, config.batch_size, config.num_workers, device):  # type: ignore[arg-type]
        for item, vector in zip(batch.items, batch.vectors):
            ready += [(pair, vector) for pair in by_image[item.key]]
        for item, reason, detail in batch.failed:
            failed += [(pair.text, reason, detail) for pair in by_image[item.key]]
        if len(ready) + len(failed) >= config.chunk_size:
            commit()
    if ready or failed:
        commit()
    return scored


def _with_captions(
    model: Any, ready: list[tuple[_Pair, np.ndarray]], config: ScoreConfig, device: str
) -> tuple[list[_Pair], np.ndarray, list[tuple[Item, str, str]]]:
    """(scored pairs, their cosines [n, 1], captions that failed (item, reason, detail))."""
    from retrieval.embed import engines

    image_of = {pair.key: vector for pair, vector in ready}
    ok: list[_Pair] = []
    rows: list[float] = []
    failed: list[tuple[Item, str, str]] = []
    by_key = {pair.key: pair for pair, _ in ready}
    for batch in engines.local_texts(model, [pair.text for pair, _ in ready], config.batch_size, device):
        for item, text_vector in zip(batch.items, batch.vectors):
            image_vector = image_of[item.key]
            cosine = float(image_vector @ text_vector) / float(
                np.linalg.norm(image_vector) * np.linalg.norm(text_vector)
            )
            ok.append(by_key[item.key])
            rows.append(cosine)
        failed += batch.failed
    return ok, np.asarray(rows, dtype=np.float32).reshape(-1, 1), failed


def _read_scores(state: Any, keys: set[str]) -> tuple[dict[str, float], dict[str, str]]:
    """key -> score of every scored pair still in the corpus; key -> reason of every skipped one."""
    import json

    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for shard in state.shards():
        with np.load(shard.path, allow_pickle=False) as data:
            for key, value in zip(
                data["keys"].tolist(), data["vectors"][:, 0].tolist() if len(data["keys"]) else []
            ):
                if key in keys:
                    scores[key] = float(value)
                    reasons.pop(key, None)
            for key, record in zip(data["skip_keys"].tolist(), data["skip_records"].tolist()):
                if key in keys and key not in scores:
                    reasons[key] = json.loads(record)["reason"]
    return scores, reasons


def _cut(values: np.ndarray, config: ScoreConfig) -> float:
    if config.keep_above is not None:
        return float(config.keep_above)
    assert config.keep_top_fraction is not None
    n = math.ceil(config.keep_top_fraction * len(values))
    return float(np.sort(values)[::-1][n - 1])


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    named = (("min", 0.0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1.0))
    return {name: float(np.quantile(values, q)) for name, q in named}


def _write_scores(out: Path, pairs: list[_Pair], scores: dict[str, float]) -> None:
    """One row per scored pair, in the corpus's order: image, caption, image_id, score, metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [p for p in pairs if p.key in scores]
    types = ColumnTypes(reserved=FIXED).observe(p.record.metadata or {} for p in rows)
    fixed_types = {
        "image": pa.string(),
        "caption": pa.string(),
        "image_id": pa.string(),
        "score": pa.float32(),
    }
    schema = pa.schema([*(pa.field(n, t) for n, t in fixed_types.items()), *types.arrow_fields()])
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(rows), 1), 65_536):
            part = rows[start : start + 65_536]
            fixed = {
                "image": (pa.string(), [str(p.record.image) for p in part]),
                "caption": (pa.string(), [str(p.record.caption) for p in part]),
                "image_id": (pa.string(), [p.record.image_id for p in part]),
                "score": (pa.float32(), [scores[p.key] for p in part]),
            }
            writer.write_table(types.table(fixed, [p.record.metadata or {} for p in part]))


def histogram_edges(values: np.ndarray, mark: float | None, bins: int) -> np.ndarray:
    """``bins + 1`` edges covering ``values`` and the ``mark`` (a threshold), never of zero width."""
    low = float(min(values.min(), mark if mark is not None else np.inf))
    high = float(max(values.max(), mark if mark is not None else -np.inf))
    pad = max(1e-3, 0.02 * (high - low))
    return np.linspace(low - pad, high + pad, bins + 1)


def _histogram(values: np.ndarray, path: Path, threshold: float | None, bins: int, kept: int | None) -> None:
    from matplotlib.figure import Figure

    from retrieval.io import atomic_write_bytes

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.hist(values, bins=histogram_edges(values, threshold, bins), color="#4c72b0")
    ax.set_xlabel("image-caption cosine")
    ax.set_ylabel("pairs")
    title = f"{len(values)} pairs, median {np.median(values):.3f}"
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--")
        title += f"; kept {kept} at >= {threshold:.3f}"
    ax.set_title(title)
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
