"""The evaluation report: a directory a person can open and a program can parse.

``write_report(evaluate_model(...), directory)``: a step the caller takes on an :class:`EvalResult`.

Files written (each atomically):

* ``metrics.json`` -- :meth:`EvalResult.summary` (metrics, sizes, skips, index and zero-shot details).
* ``report.md`` -- a Markdown summary linking the pictures below.
* ``recall_at_k.png`` -- R@K against K (log scale) for both directions.
* ``rank_histogram.png`` -- how far the first relevant item lands, both directions.
* ``samples_t2i.png`` -- sample text queries with their top images; correct ones have a green border.
* ``samples_i2t.png`` -- sample image queries with their top captions; correct ones in green.
* ``queries_t2i.csv`` / ``queries_i2t.csv`` -- one row per query: ground truth, rank, top hits.
* ``reliability.png`` -- with re-ranking: the match head's reliability diagram (ECE in the title).
* ``zero_shot_confusion.png`` -- with zero-shot labels (and the per-class accuracy in the JSON).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import textwrap
import time
from pathlib import Path

import numpy as np

from retrieval.evaluate.result import EvalResult
from retrieval.io import atomic_write_bytes, atomic_write_text
from retrieval.pretrained import describe_model_info

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

GREEN = (46, 160, 67)
GREY = (200, 200, 200)
RED = (200, 60, 60)
THUMB = 96
HITS_SHOWN = 5


def _figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _recall_curve(first_rank: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    ranks = first_rank[first_rank > 0]
    ks = np.unique(np.geomspace(1, max(n_candidates, 1), num=60).astype(np.int64))
    return ks, np.searchsorted(np.sort(ranks), ks, side="right") / max(len(ranks), 1)


def recall_plot(result: EvalResult) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, ranking in (("text → image", result.t2i), ("image → text", result.i2t)):
        ks, recall = _recall_curve(ranking.first_rank, ranking.n_candidates)
        ax.plot(ks, recall, marker=".", label=name)
    for k in result.ks:
        ax.axvline(k, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (first relevant item in the top K)")
    ax.set_title("Recall at K")
    ax.grid(alpha=0.3)
    ax.legend()
    return _figure_png(fig)


def rank_histogram(result: EvalResult) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    top = max(result.t2i.n_candidates, result.i2t.n_candidates, 2)
    bins = np.unique(np.geomspace(1, top + 1, num=30).astype(np.int64))
    for name, ranking in (("text → image", result.t2i), ("image → text", result.i2t)):
        ranks = ranking.first_rank[ranking.first_rank > 0]
        ax.hist(ranks, bins=bins, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("rank of the first relevant item (1 = best)")
    ax.set_ylabel("queries")
    ax.set_title("Rank histogram")
    ax.legend()
    return _figure_png(fig)


def reliability_plot(result: EvalResult) -> bytes:
    from matplotlib.figure import Figure

    bins = result.calibration or []
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    used = [b for b in bins if b["count"]]
    ax.bar([b["low"] for b in used], [b["accuracy"] for b in used], width=[b["high"] - b["low"] for b in used],
           align="edge", edgecolor="black", alpha=0.7, label="fraction of matches")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("predicted match probability")
    ax.set_ylabel("fraction that match")
    ax.set_title(f"Match head reliability, ECE {result.metrics.get('match/ECE', float('nan')):.3f}")
    ax.legend(loc="upper left")
    return _figure_png(fig)


def _extra_tables(result: EvalResult) -> list[str]:
    """Markdown rows for hubness correction and re-ranking, beside the dense numbers."""
    m, lines = result.metrics, []
    for prefix, title in (
        ("hub/", "With hubness correction"),
        ("exp/", "With query expansion through the query bank"),
        ("rerank/", "With re-ranking by the match head"),
    ):
        if f"{prefix}t2i/R@{result.ks[0]}" not in m:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| K | t2i R@K | (dense) | i2t R@K | (dense) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for k in result.ks:
            lines.append(
                f"| {k} | {m[f'{prefix}t2i/R@{k}']:.4f} | {m[f't2i/R@{k}']:.4f} "
                f"| {m[f'{prefix}i2t/R@{k}']:.4f} | {m[f'i2t/R@{k}']:.4f} |"
            )
        if prefix == "rerank/":
            lines += ["", f"Top {int(m['rerank/n'])} re-ranked; the head adds {m['rerank/ms_per_query']:.3f} ms "
                      f"per query; ECE on the re-ranked pairs {m['match/ECE']:.4f}."]  # fmt: skip
    return lines


def confusion_plot(result: EvalResult) -> bytes:
    from matplotlib.figure import Figure

    zs = result.zero_shot
    assert zs is not None
    n = len(zs.classes)
    size = min(3 + 0.35 * n, 16)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    counts = zs.confusion.astype(np.float64)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), zs.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), zs.classes, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Zero-shot confusion (row-normalised), top-1 {zs.accuracy.get('top1', float('nan')):.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _figure_png(fig)


def _thumbnail(ref: str):
    from PIL import Image

    from retrieval.data import load_image

    try:
        image = load_image(ref)
        image.thumbnail((THUMB, THUMB))
    except (ValueError, OSError):
        return Image.new("RGB", (THUMB, THUMB), (240, 240, 240))
    canvas = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    canvas.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return canvas


def _sample(n_queries: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_queries, size=min(n, n_queries), replace=False))


def _wrap(text: str, width: int, lines: int) -> str:
    wrapped = textwrap.wrap(text, width=width) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], wrapped[lines - 1][: width - 1] + "…"]
    return "\n".join(wrapped)


def t2i_grid(result: EvalResult, queries: np.ndarray) -> bytes:
    """Rows: a caption, then its top images (green border = its image)."""
    from PIL import Image, ImageDraw

    pad, text_w = 6, 220
    n_hits = min(HITS_SHOWN, result.t2i.n_candidates)
    cell = THUMB + 2 * pad
    grid = Image.new("RGB", (text_w + n_hits * cell, max(len(queries), 1) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    first = result.t2i.first_rank
    top = result.t2i.top_ids
    assert top is not None
    for row, q in enumerate(queries):
        y = row * cell
        label = f"#{q} rank {first[q]}\n" + _wrap(result.captions[q], 34, 6)
        draw.multiline_text((4, y + 4), label, fill=(0, 0, 0))
        for col, image_index in enumerate(top[q][:n_hits]):
            x = text_w + col * cell
            correct = int(image_index) == int(result.text_to_image[q])
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], fill=GREEN if correct else GREY)
            grid.paste(_thumbnail(result.images[int(image_index)]), (x + pad, y + pad))
    return _png(grid)


def i2t_grid(result: EvalResult, queries: np.ndarray) -> bytes:
    """Rows: an image, then its top captions (green = one of its captions)."""
    from PIL import Image, ImageDraw

    pad, text_w = 6, 560
    cell = THUMB + 2 * pad
    grid = Image.new("RGB", (cell + text_w, max(len(queries), 1) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    first = result.i2t.first_rank
    top = result.i2t.top_ids
    assert top is not None
    for row, q in enumerate(queries):
        y = row * cell
        grid.paste(_thumbnail(result.images[q]), (pad, y + pad))
        draw.text((cell + 4, y + 2), f"image #{q}, best caption at rank {first[q]}", fill=(0, 0, 0))
        for line, t in enumerate(top[q][:HITS_SHOWN]):
            correct = int(result.text_to_image[int(t)]) == int(q)
            text = _wrap(f"{line + 1}. {result.captions[int(t)]}", 90, 1)
            draw.text((cell + 4, y + 18 + 16 * line), text, fill=GREEN if correct else (60, 60, 60))
    return _png(grid)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# A text cell starting with one of these is run as a formula by spreadsheet programs (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet shows as text: strings that a spreadsheet would
    evaluate (leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) get a leading apostrophe,
    OWASP's advice against CSV injection. Numbers are kept as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([safe_cell(h) for h in header])
    writer.writerows([safe_cell(cell) for cell in row] for row in rows)
    return buf.getvalue()


def queries_t2i_csv(result: EvalResult) -> str:
    top = result.t2i.top_ids if result.t2i.top_ids is not None else np.zeros((len(result.captions), 0), int)
    first = result.t2i.first_rank
    rows = [
        [t, caption, result.images[result.text_to_image[t]], int(first[t]),
         " | ".join(result.images[int(i)] for i in top[t])]
        for t, caption in enumerate(result.captions)
    ]  # fmt: skip
    return _csv(["query", "caption", "ground_truth_image", "rank", "top_images"], rows)


def queries_i2t_csv(result: EvalResult) -> str:
    n_images = len(result.images)
    top = result.i2t.top_ids if result.i2t.top_ids is not None else np.zeros((n_images, 0), int)
    first = result.i2t.first_rank
    n_caps = np.bincount(result.text_to_image, minlength=n_images)
    rows = [
        [i, image, int(n_caps[i]), int(first[i]) if n_caps[i] else "",
         " | ".join(result.captions[int(t)] for t in top[i])]
        for i, image in enumerate(result.images)
    ]  # fmt: skip
    return _csv(["query", "image", "n_captions", "rank", "top_captions"], rows)


def markdown_summary(result: EvalResult, files: list[str]) -> str:
    m = result.metrics
    made_by = describe_model_info(result.model_info)
    lines = [
        "# Retrieval evaluation",
        "",
        f"{len(result.captions)} captions, {len(result.images)} images"
        + (f", {len(result.skipped)} skipped (see metrics.json)" if result.skipped else "")
        + (f"; model `{result.fingerprint}`" if result.fingerprint else "")
        + (f" ({made_by})" if made_by else "")
        + ".",
        "Ranks are 1-based; ties with non-relevant items count against the model (pessimistic).",
        "",
        "| K | t2i R@K | i2t R@K | i2t true R@K | t2i mAP@K | i2t mAP@K | t2i nDCG@K | i2t nDCG@K |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in result.ks:
        keys = ["t2i/R@", "i2t/R@", "i2t/true_R@", "t2i/mAP@", "i2t/mAP@", "t2i/nDCG@", "i2t/nDCG@"]
        lines.append(f"| {k} | " + " | ".join(f"{m[key + str(k)]:.4f}" for key in keys) + " |")
    lines += [
        "",
        "| direction | MRR | median rank | mean rank | queries |",
        "|---|---:|---:|---:|---:|",
    ]
    for d in ("t2i", "i2t"):
        lines.append(
            f"| {d} | {m[d + '/MRR']:.4f} | {m[d + '/median_rank']:g} | {m[d + '/mean_rank']:.2f} "
            f"| {int(m[d + '/n_queries'])} |"
        )
    lines += _extra_tables(result)
    if result.hybrid is not None:
        lines += ["", "## Dense, lexical and hybrid text → image", "", result.hybrid.markdown(result.ks)]
    if result.index is not None:
        lines += ["", "## Exact search vs the collection's index", "", result.index.markdown()]
        if result.index.missing_images and not result.index.added_images:
            lines.append(f"\n{result.index.missing_images} evaluated images are not in the collection.")
    if result.leakage is not None:
        lines += ["", "## Leakage from the training data", "", result.leakage.markdown()]
    if result.zero_shot is not None:
        zs = result.zero_shot
        acc = ", ".join(f"{name} {value:.4f}" for name, value in zs.accuracy.items())
        lines += ["", "## Zero-shot classification", "", f"{len(zs.classes)} classes, "
                  f"{len(zs.predictions)} images: {acc}; mean per-class top-1 "
                  f"{zs.metrics()['zeroshot/mean_per_class']:.4f}."]  # fmt: skip
        worst = sorted((v, k) for k, v in zs.per_class_accuracy.items() if not np.isnan(v))[:15]
        lines += ["", "Lowest per-class top-1 accuracy:", "", "| class | top-1 | images |", "|---|---:|---:|"]
        support = dict(zip(zs.classes, zs.confusion.sum(1).tolist()))
        lines += [f"| {name} | {acc:.4f} | {support[name]} |" for acc, name in worst]
    lines += ["", "## Files", ""]
    for name in files:
        lines.append(f"![{name}]({name})\n" if name.endswith(".png") else f"- [{name}]({name})")
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, directory: str | Path, *, n_samples: int = 8, seed: int = 0) -> Path:
    """Write the report files (module docstring) of ``result`` into ``directory``; returns its path.

    ``n_samples`` queries (drawn with ``seed``) appear in each sample grid (``EvalConfig.n_samples``
    and ``EvalConfig.seed`` are the usual values)."""
    started = time.perf_counter()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "recall_at_k.png": recall_plot(result),
        "rank_histogram.png": rank_histogram(result),
        "queries_t2i.csv": queries_t2i_csv(result).encode("utf-8"),
        "queries_i2t.csv": queries_i2t_csv(result).encode("utf-8"),
    }
    if n_samples > 0 and result.t2i.top_ids is not None:
        files["samples_t2i.png"] = t2i_grid(result, _sample(len(result.captions), n_samples, seed))
    if n_samples > 0 and result.i2t.top_ids is not None:
        with_captions = np.nonzero(np.bincount(result.text_to_image, minlength=len(result.images)))[0]
        files["samples_i2t.png"] = i2t_grid(
            result, with_captions[_sample(len(with_captions), n_samples, seed)]
        )
    if result.zero_shot is not None:
        files["zero_shot_confusion.png"] = confusion_plot(result)
    if result.calibration is not None:
        files["reliability.png"] = reliability_plot(result)
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    atomic_write_text(out / "report.md", markdown_summary(result, sorted(files)))
    # metrics.json last: its presence means the report is complete
    atomic_write_text(out / "metrics.json", json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    logger.info("report written to %s in %.1f s", out, time.perf_counter() - started)
    return out
