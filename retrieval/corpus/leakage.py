"""Leakage between splits: test images with a near-duplicate in the training data, and recall measured
with and without them.

An evaluation is quietly inflated when test images have near-copies in training: a model that has
seen the copy retrieves it by memory, not by understanding (the OpenMoji demo's skin-tone and
gender variants are exactly such copies, which is why its split is by family). For every test
image this module finds its most similar training image (exact cosine: the training images are
streamed in chunks against all test images, memory of one chunk), flags those at or above
``threshold`` as leaked, and measures retrieval both ways over all queries and again without the
leaked ones (``clean/...`` metrics: a caption query is left out when its image leaked, an image
query when it leaked; the candidates stay the same).

The training data is a corpus (any source :func:`retrieval.data.read_corpus` reads: its images are
encoded) or a collection the same model embedded (its stored image vectors are used: nothing to
encode).

* :func:`check_leakage` -- the ``retrieval leakage TRAIN TEST`` command: evaluates TEST (when it has
  pairs) and checks it against TRAIN.
* :func:`with_leakage` -- the same check added to an :class:`~retrieval.evaluate.EvalResult`, for
  ``retrieval eval --leakage TRAIN`` (the report gets a section).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.corpus.config import LeakageConfig
from retrieval.corpus.neighbours import unit_rows
from retrieval.corpus.scores import histogram_edges

__all__ = [
    "Leakage",
    "check_leakage",
    "clean_metrics",
    "nearest_training",
    "training_vectors",
    "with_leakage",
]


@dataclasses.dataclass(frozen=True)
class Leak:
    """A test image and its most similar training image."""

    test: str  # the test image (reference)
    train: str  # the training image (reference)
    score: float  # their cosine
    caption: str | None = None  # a caption of the test image, when the test data has them


@dataclasses.dataclass(frozen=True)
class Leakage:
    """What :func:`check_leakage` found."""

    threshold: float
    train: str  # the training data, as given
    test_images: int  # test images compared
    train_images: int  # training images compared
    leaked: np.ndarray  # [L] indices of the leaked test images (into the evaluated images)
    nearest: np.ndarray  # [test_images] float32, each test image's best cosine to a training image
    examples: tuple[Leak, ...]  # the most similar leaked pairs, best first
    metrics: dict[str, float]  # "t2i/R@1", ... and "clean/t2i/R@1", ... (empty without test pairs)
    seconds: float

    @property
    def share(self) -> float:
        return len(self.leaked) / self.test_images if self.test_images else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready."""
        quantiles = (
            {f"p{q}": float(np.percentile(self.nearest, q)) for q in (50, 90, 99)}
            if len(self.nearest)
            else {}
        )
        return {
            "threshold": self.threshold,
            "train": self.train,
            "test_images": self.test_images,
            "train_images": self.train_images,
            "leaked": len(self.leaked),
            "share": self.share,
            "nearest_training_cosine": quantiles,
            "examples": [dataclasses.asdict(e) for e in self.examples],
            "metrics": {k: (None if np.isnan(v) else v) for k, v in self.metrics.items()},
            "seconds": round(self.seconds, 3),
        }

    def _recall_rows(self) -> list[tuple[str, float, float]]:
        return [
            (key, self.metrics[key], self.metrics.get(f"clean/{key}", float("nan")))
            for key in self.metrics
            if not key.startswith("clean/") and "/R@" in key and "true_" not in key
        ]

    def markdown(self) -> str:
        """The report section (Markdown)."""
        lines = [
            f"{len(self.leaked)} of {self.test_images} test images ({100 * self.share:.1f} %) have a near-duplicate "
            f"(cosine >= {self.threshold:g}) among the {self.train_images} training images of `{self.train}`.",
        ]
        if len(self.nearest):
            median = float(np.median(self.nearest))
            lines.append(f"Median cosine of a test image to its nearest training image: {median:.3f}.")
        rows = self._recall_rows()
        if rows:
            n_clean = self.metrics.get("clean/t2i/n_queries")
            lines += [
                "",
                f"| metric | all queries | without leaked queries ({n_clean:g} captions) |",
                "|---|---:|---:|",
            ]
            lines += [f"| {key} | {a:.4f} | {b:.4f} |" for key, a, b in rows]
        if self.examples:
            lines += ["", "| test image | nearest training image | cosine |", "|---|---|---:|"]
            lines += [f"| {e.test} | {e.train} | {e.score:.4f} |" for e in self.examples]
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [
            f"{len(self.leaked)} of {self.test_images} test images ({100 * self.share:.1f} %) have a near-duplicate "
            f"(cosine >= {self.threshold:g}) in the training data ({self.train_images} images)"
        ]
        for key, a, b in self._recall_rows():
            clean = "n/a (every query leaked)" if np.isnan(b) else f"{b:.4f}"
            lines.append(f"  {key}: {a:.4f} over all queries, {clean} without the leaked ones")
        for e in self.examples[:5]:
            lines.append(f"  {e.score:.4f}  {e.test}  ~  {e.train}")
        return "\n".join(lines)


def training_vectors(model: Any, train: Any, config: LeakageConfig) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(references, vectors [b, D])`` of the training images, ``config.chunk_size`` at a time: the
    stored vectors of a collection the same model embedded, else the corpus's images encoded."""
    from indexes import collection_exists

    if isinstance(train, (str, os.PathLike)) and collection_exists(train):
        yield from _collection_vectors(model, train, config.chunk_size)
        return
    from retrieval import encoding
    from retrieval.data import read_corpus

    corpus = read_corpus(train, **config.read_options()) if isinstance(train, (str, os.PathLike)) else train
    refs = list(dict.fromkeys(r.image for r in corpus.records if r.image is not None))
    for start in range(0, len(refs), config.chunk_size):
        chunk = refs[start : start + config.chunk_size]
        encoded = encoding.encode_images(
            model, chunk, batch_size=config.batch_size, device=config.device, skip_broken=True,
            progress=config.progress,
        )  # fmt: skip
        yield [chunk[i] for i in encoded.positions], encoded.vectors.numpy()


def _collection_vectors(model: Any, location: Any, chunk: int) -> Iterator[tuple[list[str], np.ndarray]]:
    from indexes import open_collection
    from indexes.fingerprint import check_fingerprint
    from retrieval.corpus.selection import held_modalities, ids_of

    with open_collection(location, read_only=True) as coll:
        check_fingerprint(
            coll.fingerprint or None,
            str(model.fingerprint()) if hasattr(model, "fingerprint") else None,
            what=f"collection {location}",
            fix="check leakage with the model that embedded the training collection, or pass the training data",
        )
        held = held_modalities(coll)
        ids = ids_of(coll, "image" if held and "image" in held else None)
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            refs = [str((m or {}).get("path", f"id {i}")) for i, m in zip(part.tolist(), coll.get(part))]
            yield refs, coll.vectors(part)


def nearest_training(
    test: np.ndarray, batches: Iterator[tuple[list[str], np.ndarray]]
) -> tuple[np.ndarray, list[str | None], int]:
    """Each test vector's best cosine to a training vector, that training item's reference, and how
    many training items there were (exact: blocked matrix products)."""
    queries = unit_rows(test)  # [T, D]
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where: list[str | None] = [None] * len(queries)
    seen = 0
    for refs, vectors in batches:
        if not len(refs):
            continue
        scores = queries @ unit_rows(vectors).T  # [T, b]
        column = scores.argmax(axis=1)
        top = scores[np.arange(len(queries)), column]
        better = top > best
        best[better] = top[better]
        for row in np.flatnonzero(better):
            where[row] = refs[int(column[row])]
        seen += len(refs)
    return best, where, seen


def clean_metrics(result: Any, leaked: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Retrieval metrics of an :class:`~retrieval.evaluate.EvalResult` over every query
    (``t2i/R@K``...) and without the queries involving a ``leaked`` image (``clean/t2i/R@K``...):
    a caption of a leaked image as a text query, a leaked image as an image query."""
    from retrieval.evaluate._ranking import Ranking
    from retrieval.evaluate.metrics import ranking_metrics

    bad = np.zeros(len(result.images), dtype=bool)
    bad[np.asarray(leaked, dtype=np.int64)] = True

    def without(ranking: Ranking, drop: np.ndarray) -> Ranking:
        keep = ~drop[ranking.pair_query]
        return dataclasses.replace(
            ranking,
            pair_query=ranking.pair_query[keep],
            pair_candidate=ranking.pair_candidate[keep],
            pair_rank=ranking.pair_rank[keep],
        )

    out = {k: v for k, v in result.metrics.items() if k.startswith(("t2i/", "i2t/"))}
    for name, ranking, drop, true_recall in (
        ("t2i", result.t2i, bad[result.text_to_image], False),
        ("i2t", result.i2t, bad, True),
    ):
        try:
            out.update(ranking_metrics(without(ranking, drop), ks, f"clean/{name}/", true_recall=true_recall))
        except ValueError:  # every query leaked
            out.update({f"clean/{name}/R@{k}": float("nan") for k in ks} | {f"clean/{name}/n_queries": 0.0})
    return out


def _leakage(
    test_refs: list[str],
    test_vectors: np.ndarray,
    captions: dict[str, str],
    model: Any,
    train: Any,
    config: LeakageConfig,
    result: Any,
    started: float,
) -> Leakage:
    best, where, seen = nearest_training(test_vectors, training_vectors(model, train, config))
    leaked = np.flatnonzero(best >= config.threshold)
    order = leaked[np.argsort(-best[leaked], kind="stable")][: config.examples]
    examples = tuple(
        Leak(test_refs[i], str(where[i]), float(best[i]), captions.get(test_refs[i])) for i in order
    )
    metrics = clean_metrics(result, leaked, config.ks) if result is not None else {}
    return Leakage(
        threshold=config.threshold,
        train=str(train),
        test_images=len(test_refs),
        train_images=seen,
        leaked=leaked,
        nearest=np.where(np.isfinite(best), best, np.nan).astype(np.float32),
        examples=examples,
        metrics=metrics,
        seconds=time.perf_counter() - started,
    )


def with_leakage(result: Any, model: Any, train: Any, config: LeakageConfig | None = None) -> Any:
    """``result`` (an :class:`~retrieval.evaluate.EvalResult` of ``model``) with its ``leakage``
    against the training data ``train``: the report (:func:`retrieval.evaluate.write_report`) then
    has a leakage section and ``metrics.json`` a ``leakage`` entry."""
    config = config or LeakageConfig()
    started = time.perf_counter()
    vectors = getattr(result, "image_vectors", None)
    if vectors is None:
        from retrieval import encoding

        vectors = encoding.encode_images(
            model, result.images, batch_size=config.batch_size, device=config.device
        ).vectors.numpy()
    captions = {result.images[i]: c for c, i in zip(result.captions, result.text_to_image.tolist())}
    leak = _leakage(list(result.images), vectors, captions, model, train, config, result, started)
    return dataclasses.replace(result, leakage=leak)


def check_leakage(model: Any, train: Any, test: Any, config: LeakageConfig | None = None) -> Leakage:
    """Test images of ``test`` with a near-duplicate in ``train`` (a corpus, or a collection ``model``
    embedded), and, when ``test`` has pairs, recall with and without them (:class:`Leakage`)."""
    from retrieval.data import read_corpus

    config = config or LeakageConfig()
    started = time.perf_counter()
    corpus = read_corpus(test, **config.read_options()) if isinstance(test, (str, os.PathLike)) else test
    pairs = corpus.pairs()
    if len(pairs):
        from retrieval.config import EvalConfig
        from retrieval.evaluate import evaluate_model

        evaluation = EvalConfig(
            ks=tuple(config.ks), batch_size=config.batch_size, chunk_size=config.chunk_size,
            device=config.device, progress=config.progress,
        )  # fmt: skip
        result = evaluate_model(model, pairs, config=evaluation)
        return with_leakage(result, model, train, config).leakage
    from retrieval import encoding

    refs = list(dict.fromkeys(r.image for r in corpus.records if r.image is not None))
    if not refs:
        from retrieval.data import EmptyCorpusError

        raise EmptyCorpusError(f"{test} holds no image to check for leakage (it holds {corpus.describe()})")
    encoded = encoding.encode_images(
        model, refs, batch_size=config.batch_size, device=config.device, skip_broken=True
    )
    kept = [refs[i] for i in encoded.positions]
    return _leakage(kept, encoded.vectors.numpy(), {}, model, train, config, None, started)


def write_leakage(leakage: Leakage, folder: str | Path) -> Path:
    """``leakage.json``, ``leakage.md`` and ``nearest.png`` (the histogram of each test image's best
    cosine to the training images, the threshold marked) into ``folder``."""
    import io
    import json

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from retrieval.io import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    finite = leakage.nearest[np.isfinite(leakage.nearest)]
    if len(finite):
        ax.hist(finite, bins=histogram_edges(finite, leakage.threshold, 50), color="#4c72b0")
    ax.axvline(leakage.threshold, color="#c44e52", linestyle="--")
    ax.set_xlabel("cosine of a test image to its nearest training image")
    ax.set_ylabel("test images")
    ax.set_title(f"{len(leakage.leaked)} of {leakage.test_images} at >= {leakage.threshold:g}")
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(folder / "nearest.png", buffer.getvalue())
    atomic_write_text(
        folder / "leakage.md",
        "# Leakage from the training data\n\n" + leakage.markdown() + "\n\n![nearest](nearest.png)\n",
    )
    atomic_write_text(folder / "leakage.json", json.dumps(leakage.summary(), indent=2) + "\n")
    return folder
