"""The corpus tools measured: near-duplicates at scale, and dedup / leakage / pair scores on OpenMoji.

Two parts (``synthetic``, ``openmoji``; ``all`` runs both):

1. ``synthetic`` -- a collection of ``--n`` unit vectors (``--dim``) around 1 centre per 1,000
   vectors (two members of a cluster: cosine ~0.74), ``index="auto"``, with planted duplicate groups
   (2-4 near copies of one vector, cosine ~0.98 to it; ``--dup-share`` of the items) and as many
   planted near misses (one copy at cosine ~0.90: not a duplicate at the threshold 0.95). ``dedup``
   runs in a child process: its wall time and peak anonymous memory (and that of the open collection,
   so the tool's own memory shows; memory-mapped collection files are not counted), the recall of the planted pairs (both ends in one reported group) and
   the precision of the reported pairs; ``--sample 10000`` against the true duplicate rate. With
   ``--quick`` (20k vectors) the index result is also compared with ``--exact`` brute force.
2. ``openmoji`` -- with a trained model (``--model``; default: the demo's ``run/best`` when
   ``retrieval demo`` has run, else the default recipe is trained here, minutes of CPU):
   a. dedup: a threshold chosen on the train split (the best F1 of the pairs within the groups it
      would form against the skin-tone / gender variant families), then ``find_duplicates`` on the test split's images:
      precision and recall of the pairs it reports (within its groups, and the direct pairs)
      against the test split's families;
   b. leakage: a deliberately leaky split (the emoji split at random by image, 80/20, not by family)
      and the honest family split, at that threshold: test images flagged, precision and recall of
      the flags against "a variant of it is in training", recall over all queries and without the
      flagged ones;
   c. pair scores: the test manifest with 10 % of its captions shuffled between rows; the ROC AUC
      of ``score`` separating the true pairs from the shuffled ones.

Run alone on the machine (timings, peak memory):

    python benchmarks/bench_corpus.py all                       # 1M vectors + OpenMoji (about 20 min)
    python benchmarks/bench_corpus.py synthetic --n 1000000     # the 1M part only
    python benchmarks/bench_corpus.py openmoji --model ~/.cache/siamese-retrieval/demo/run/best
    python benchmarks/bench_corpus.py all --quick               # a check of the script: 20k vectors, 200 emoji, a random model

Prints the tables and writes them to ``benchmarks/results/corpus_synthetic.md`` and
``benchmarks/results/corpus_openmoji.md`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = 0.95

DEDUP_CHILD = r"""
import json, sys, threading, time
from retrieval.corpus import DedupConfig, find_duplicates
from indexes import open_collection

path, out, threshold, exact = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
def anon_mb():  # anonymous memory: what the process allocated (mapped files, reclaimable, are not counted)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
peak = [0.0]
def watch():
    while True:
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
with open_collection(path, read_only=True) as coll:
    opened = anon_mb()
    t0 = time.perf_counter()
    result = find_duplicates(coll, DedupConfig(threshold=threshold, exact=exact, progress=False), out=out)
    seconds = time.perf_counter() - t0
    dedup_peak = max(peak[0], anon_mb())
    t0 = time.perf_counter()
    sample = find_duplicates(coll, DedupConfig(threshold=threshold, sample=10_000, progress=False))
    sample_s = time.perf_counter() - t0
print(json.dumps({
    "seconds": seconds, "opened_mb": opened, "peak_mb": dedup_peak,
    "summary": result.summary(), "estimate": sample.summary()["estimates"][0], "sample_s": sample_s,
}))
"""


# ------------------------------------------------------------------------------ synthetic
def synthetic_vectors(
    n: int, dim: int, dup_share: float, seed: int
) -> tuple[np.ndarray, list[list[int]], int]:
    """Clustered unit vectors with planted duplicate groups and near misses; (vectors, groups, near misses)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        block = centres[rng.integers(0, len(centres), hi - lo)] + 0.6 * rng.standard_normal((hi - lo, dim))
        vectors[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    order = rng.permutation(n)
    groups: list[list[int]] = []
    used = 0
    budget = int(dup_share * n)
    while used < budget:
        size = int(rng.integers(2, 5))
        members = order[used : used + size]
        used += size
        base = vectors[members[0]]
        for m in members[1:]:  # cosine ~0.98 to the base
            copy = base + 0.2 / np.sqrt(dim) * rng.standard_normal(dim).astype(np.float32)
            vectors[m] = copy / np.linalg.norm(copy)
        groups.append(sorted(int(i) for i in members))
    misses = 0
    for a, b in order[used : used + 2 * len(groups)].reshape(-1, 2):  # one near miss per group: ~0.90
        copy = vectors[a] + 0.48 / np.sqrt(dim) * rng.standard_normal(dim).astype(np.float32)
        vectors[b] = copy / np.linalg.norm(copy)
        misses += 1
    return vectors, groups, misses


def pair_set(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}


def reported_groups(folder: Path) -> list[list[int]]:
    from retrieval.corpus.groups import read_groups

    return [[m["id"] for m in g["members"]] for g in read_groups(folder / "groups.jsonl")]


def run_child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synthetic(args: argparse.Namespace, work: Path) -> str:
    from indexes import Collection

    n = args.n or (20_000 if args.quick else 1_000_000)
    t0 = time.perf_counter()
    vectors, groups, misses = synthetic_vectors(n, args.dim, args.dup_share, args.seed)
    path = work / "synthetic.coll"
    with Collection.create(path, dim=args.dim, index="auto") as coll:
        for lo in range(0, n, 100_000):
            coll.add(vectors[lo : lo + 100_000])
    build_s = time.perf_counter() - t0
    with Collection.open(path, read_only=True) as coll:
        index = coll.info()["index_spec"]
    del vectors
    print(
        f"built {n:,} x {args.dim} ({index}) with {len(groups):,} planted groups in {build_s:.0f}s",
        flush=True,
    )
    truth = pair_set(groups)
    rows = []
    modes = [("index", "0"), ("exact", "1")] if args.quick else [("index", "0")]
    for mode, exact in modes:
        out = work / f"dedup-{mode}"
        r = run_child(DEDUP_CHILD, str(path), str(out), str(THRESHOLD), exact)
        found = pair_set(reported_groups(out))
        recall = len(found & truth) / len(truth)
        precision = len(found & truth) / len(found) if found else 1.0
        planted_items = sum(len(g) for g in groups)
        e = r["estimate"]
        rows.append(
            f"| {mode} ({index}) | {n:,} | {r['seconds']:.1f} | {r['peak_mb']:.0f} ({r['opened_mb']:.0f}) | "
            f"{recall:.4f} | {precision:.4f} | {planted_items / n:.4f} | {e['rate']:.4f} [{e['low']:.4f}, {e['high']:.4f}] "
            f"in {r['sample_s']:.1f}s |"
        )
        print(rows[-1], flush=True)
    return "\n".join(
        [
            "# Near-duplicates at scale (synthetic)",
            "",
            f"`python benchmarks/bench_corpus.py synthetic --n {n}{' --quick' if args.quick else ''}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. {n:,} x {args.dim} clustered unit "
            f"vectors, index auto; {len(groups):,} planted groups of 2-4 near copies (cosine ~0.98) and {misses:,} "
            f"planted near misses (~0.90); threshold {THRESHOLD}; connected components. Build {build_s:.0f} s.",
            "",
            "| search | items | dedup (s) | peak anonymous memory, MB (after opening the collection) | recall of planted pairs | precision | true duplicate rate | --sample 10000 estimate [95 % CI] |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )


# ------------------------------------------------------------------------------ openmoji
def openmoji_model(args: argparse.Namespace, data, work: Path) -> str:
    """The model to measure: --model, the demo's, a random tiny one (--quick) or the default recipe trained here."""
    from retrieval.paths import cache_dir

    if args.model:
        return args.model
    if args.quick:
        from retrieval.config import ModelConfig
        from retrieval.model import build_model

        config = ModelConfig(image_tower="cnn", text_tower="gru", embed_dim=32, image_size=32, image_width=8,
                             image_layers=2, text_width=16, text_layers=1, vocab_size=300, context_length=16)  # fmt: skip
        folder = work / "random-model"
        build_model(config, captions=["a face"], device="cpu").save(folder)
        return str(folder)
    demo = cache_dir() / "demo" / "run" / "best"  # (cache_dir("demo") would create the folder)
    if demo.exists():
        return str(demo)
    from retrieval.config import TrainConfig
    from retrieval.train import train

    run = cache_dir("benchmarks") / "corpus-run"
    if (run / "best").exists() and (run / "final").exists():  # trained by an earlier run of this script
        return str(run / "best")
    result = train(
        TrainConfig(train_data=str(data.train), val_data=str(data.val), out_dir=str(run), time_budget=420.0)
    )
    return str(result.model_dir)


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def _images(rows: list[dict], root: Path) -> dict[str, str]:
    """absolute image path -> family."""
    return {str((root / r["image"]).resolve()): r["family"] for r in rows}


def family_pairs(images: list[str], family: dict[str, str]) -> set[tuple[int, int]]:
    by: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        by.setdefault(family[image], []).append(i)
    return pair_set(list(by.values()))


def choose_threshold(
    vectors: np.ndarray, families: list[str], grouped: bool = False
) -> tuple[float, tuple[float, float, float, float]]:
    """The cosine threshold (a 0.0025 grid from 0.30) whose image pairs best match the families (F1),
    and (threshold, precision, recall, F1) there.

    ``grouped=False`` scores the direct pairs at or above the threshold (what a leakage flag is);
    ``grouped=True`` scores every pair within the connected components those pairs form (what
    ``dedup`` reports with its default policy), so chaining through loose pairs is paid for.
    """
    n = len(vectors)
    rows, cols = np.triu_indices(n, 1)
    scores = np.einsum("pd,pd->p", vectors[rows], vectors[cols])
    labels = np.asarray(families)
    same = labels[rows] == labels[cols]
    truth = int(same.sum())
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(same[order])
    sorted_scores = scores[order]
    grid = np.round(np.arange(0.30, 0.9995, 0.0025), 4)
    best = (1.0, 0.0, 0.0, 0.0)
    if not truth:
        return best[0], best
    if not grouped:
        for t in grid:
            k = int(np.searchsorted(-sorted_scores, -t, side="right"))  # pairs at or above t
            if k == 0:
                continue
            p, r = hits[k - 1] / k, hits[k - 1] / truth
            f = 2 * p * r / (p + r) if p + r else 0.0
            if f > best[3]:
                best = (float(t), float(p), float(r), float(f))
        return best[0], best
    # components grow as the threshold falls: merge pairs in descending order (union-find, each
    # component's family counts merged small into large), read the grid points on the way down
    parent = list(range(n))
    counts: list[dict[str, int]] = [{label: 1} for label in families]
    size = [1] * n
    pairs = true_pairs = 0

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    position = 0
    for t in grid[::-1]:
        while position < len(order) and sorted_scores[position] >= t:
            p_index = order[position]
            a, b = find(int(rows[p_index])), find(int(cols[p_index]))
            position += 1
            if a == b:
                continue
            if size[a] < size[b]:
                a, b = b, a
            pairs += size[a] * size[b]
            true_pairs += sum(c * counts[a].get(label, 0) for label, c in counts[b].items())
            for label, c in counts[b].items():
                counts[a][label] = counts[a].get(label, 0) + c
            counts[b] = {}
            size[a] += size[b]
            parent[b] = a
        if pairs == 0:
            continue
        p, r = true_pairs / pairs, true_pairs / truth
        f = 2 * p * r / (p + r) if p + r else 0.0
        if f > best[3]:
            best = (float(t), float(p), float(r), float(f))
    return best[0], best


def prf(found: set, truth: set) -> tuple[float, float, float]:
    hit = len(found & truth)
    p = hit / len(found) if found else 1.0
    r = hit / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties count half)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        same = scores == value
        ranks[same] = ranks[same].mean()
    return float(
        (ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
        / (len(positive) * len(negative))
    )


def openmoji(args: argparse.Namespace, work: Path) -> str:
    from indexes import Collection
    from retrieval.config import EmbedConfig
    from retrieval.corpus import (
        DedupConfig,
        LeakageConfig,
        ScoreConfig,
        check_leakage,
        find_duplicates,
        score_pairs,
    )
    from retrieval.datasets.openmoji import build_openmoji
    from retrieval.embed import embed_corpus
    from retrieval.model import load_model

    started = time.perf_counter()
    data = build_openmoji(size=72, limit=200 if args.quick else None, progress=False)
    model_name = openmoji_model(args, data, work)
    model = load_model(model_name, device="cpu")
    root = data.root
    all_rows = _rows(data.train) + _rows(data.val) + _rows(data.test)
    family = _images(all_rows, root)
    everything = work / "all.jsonl"
    everything.write_text(
        "".join(json.dumps({**r, "image": str((root / r["image"]).resolve())}) + "\n" for r in all_rows)
    )
    coll_all = work / "all.coll"
    embed_corpus(
        model,
        everything,
        coll_all,
        EmbedConfig(modality="images", index="Flat", progress=False, num_workers=0),
    )
    with Collection.open(coll_all, read_only=True) as coll:
        ids = coll.ids()
        meta = coll.get(ids)
        vectors = coll.vectors(ids)
    paths = [m["path"] for m in meta]
    split_of = {str((root / r["image"]).resolve()): r["split"] for r in all_rows}

    # a. threshold on the train split, dedup on the test split
    train_idx = [i for i, p in enumerate(paths) if split_of[p] == "train"]
    train_labels = [family[paths[i]] for i in train_idx]
    threshold, best = choose_threshold(vectors[train_idx], train_labels, grouped=True)
    direct_threshold, direct_best = choose_threshold(vectors[train_idx], train_labels)
    test_idx = [i for i, p in enumerate(paths) if split_of[p] == "test"]
    test_coll = work / "test.coll"
    with Collection.create(test_coll, dim=vectors.shape[1], index="Flat") as coll:
        coll.add(vectors[test_idx], [meta[i] for i in test_idx])
    with Collection.open(test_coll, read_only=True) as coll:
        test_paths = [m["path"] for m in coll.get(coll.ids())]
    result = find_duplicates(
        test_coll, DedupConfig(threshold=threshold, progress=False), out=work / "test-dedup"
    )
    test_truth = family_pairs(test_paths, family)
    grouped = pair_set(reported_groups(work / "test-dedup"))
    test_sims = vectors[test_idx] @ vectors[test_idx].T
    direct = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(test_sims >= threshold, 1)))}
    g_p, g_r, g_f = prf(grouped, test_truth)
    d_p, d_r, d_f = prf(direct, test_truth)

    # b. leakage: random-by-image split vs the family split
    rng = np.random.default_rng(args.seed)
    images = sorted(set(paths))
    leaky_train = set(rng.choice(images, size=int(0.8 * len(images)), replace=False).tolist())
    rows_abs = [{**r, "image": str((root / r["image"]).resolve())} for r in all_rows]
    leaky_test_m = work / "leaky-test.jsonl"
    leaky_test_m.write_text("".join(json.dumps(r) + "\n" for r in rows_abs if r["image"] not in leaky_train))
    leaky_coll = work / "leaky-train.coll"
    with Collection.create(
        leaky_coll, dim=vectors.shape[1], index="Flat", fingerprint=model.fingerprint()
    ) as coll:
        chosen = [i for i, p in enumerate(paths) if p in leaky_train]
        coll.add(vectors[chosen], [meta[i] for i in chosen])
    leak_config = LeakageConfig(threshold=threshold, progress=False, examples=5)
    leaky = check_leakage(model, leaky_coll, leaky_test_m, leak_config)
    train_families = {family[p] for p in leaky_train}
    test_images_order = list(dict.fromkeys(r["image"] for r in rows_abs if r["image"] not in leaky_train))
    truth_flags = {p for p in test_images_order if family[p] in train_families}
    evaluated = _evaluated_images(model, leaky_test_m)
    flagged = {evaluated[i] for i in leaky.leaked.tolist()}
    l_p, l_r, l_f = prf(flagged, truth_flags)
    honest_coll = work / "train.coll"  # the family split's training images, already encoded
    with Collection.create(
        honest_coll, dim=vectors.shape[1], index="Flat", fingerprint=model.fingerprint()
    ) as coll:
        coll.add(vectors[train_idx], [meta[i] for i in train_idx])
    honest = check_leakage(model, honest_coll, data.test, leak_config)

    # c. pair scores with 10 % shuffled captions
    test_rows = [{**r, "image": str((root / r["image"]).resolve())} for r in _rows(data.test)]
    chosen = rng.choice(len(test_rows), size=max(2, len(test_rows) // 10), replace=False)
    captions = [test_rows[i]["caption"] for i in chosen]
    for i, caption in zip(
        chosen, captions[1:] + captions[:1]
    ):  # each chosen row takes the next one's caption
        test_rows[i] = {**test_rows[i], "caption": caption, "shuffled": True}
    shuffled_m = work / "shuffled.jsonl"
    shuffled_m.write_text("".join(json.dumps({"shuffled": False, **r}) + "\n" for r in test_rows))
    score_pairs(model, shuffled_m, work / "scores.parquet", ScoreConfig(progress=False, num_workers=0))
    import pyarrow.parquet as pq

    table = pq.read_table(work / "scores.parquet").to_pylist()
    true_scores = np.array([r["score"] for r in table if not r["shuffled"]])
    fake_scores = np.array([r["score"] for r in table if r["shuffled"]])
    roc = auc(true_scores, fake_scores)

    m = leaky.metrics
    lines = [
        "# Corpus tools on OpenMoji",
        "",
        f"`python benchmarks/bench_corpus.py openmoji{' --quick' if args.quick else ''}`; model `{model_name}`; "
        f"{len(images):,} emoji images ({len(train_idx):,} train, {len(test_idx):,} test); {time.perf_counter() - started:.0f} s.",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| dedup threshold chosen on the train split (best F1 of the pairs within its groups vs variant families) | {threshold:.4f} (train P {best[1]:.3f} / R {best[2]:.3f} / F1 {best[3]:.3f}) |",
        f"| for comparison, the best F1 of direct image pairs on the train split (chains flag too much: see the thresholds below) | {direct_threshold:.4f} (train P {direct_best[1]:.3f} / R {direct_best[2]:.3f} / F1 {direct_best[3]:.3f}) |",
        f"| dedup on the test split: pairs within reported groups vs families ({len(test_truth)} family pairs) | P {g_p:.3f} / R {g_r:.3f} / F1 {g_f:.3f}; {result.groups} groups, {result.duplicates} would go |",
        f"| same, direct pairs at the threshold | P {d_p:.3f} / R {d_r:.3f} / F1 {d_f:.3f} |",
        f"| leakage at its threshold, random split by image: test images flagged | {len(leaky.leaked)} of {leaky.test_images} ({100 * leaky.share:.1f} %); truly leaked (a variant in train): {len(truth_flags)} |",
        f"| flags vs truly leaked | P {l_p:.3f} / R {l_r:.3f} / F1 {l_f:.3f} |",
        f"| t2i R@1 / R@10, random split: all queries vs without flagged | {m.get('t2i/R@1', float('nan')):.3f} / {m.get('t2i/R@10', float('nan')):.3f} vs {m.get('clean/t2i/R@1', float('nan')):.3f} / {m.get('clean/t2i/R@10', float('nan')):.3f} |",
        f"| leakage, the family split (honest): test images flagged | {len(honest.leaked)} of {honest.test_images} ({100 * honest.share:.1f} %) |",
        f"| pair scores: ROC AUC of true vs 10 % shuffled captions ({len(true_scores)} / {len(fake_scores)}) | {roc:.4f} |",
        "",
        "Other thresholds (dedup on the test split: pairs within groups; leakage flags from the same nearest-image cosines):",
        "",
        "| threshold | dedup P / R / F1 | random split: flagged | flags P / R / F1 | family split: flagged |",
        "|---:|---|---:|---|---:|",
    ]
    for t in sorted({threshold, direct_threshold, 0.85, 0.9, 0.95, 0.98}):
        swept = find_duplicates(
            test_coll, DedupConfig(threshold=t, progress=False), out=work / f"test-dedup-{t}"
        )
        dp, dr, df = prf(pair_set(reported_groups(work / f"test-dedup-{t}")), test_truth)
        flags = {evaluated[i] for i in np.flatnonzero(leaky.nearest >= t)}
        fp, fr, ff = prf(flags, truth_flags)
        honest_n = int((honest.nearest >= t).sum())
        lines.append(
            f"| {t:.4f} | {dp:.3f} / {dr:.3f} / {df:.3f} ({swept.duplicates} would go) | {len(flags)} "
            f"({100 * len(flags) / leaky.test_images:.1f} %) | {fp:.3f} / {fr:.3f} / {ff:.3f} | {honest_n} "
            f"({100 * honest_n / honest.test_images:.1f} %) |"
        )
    return "\n".join(lines)


def _evaluated_images(model, manifest: Path) -> list[str]:
    """The image order check_leakage's evaluation uses (the pair set's first-seen image order)."""
    from retrieval.data import read_pairs

    return read_pairs(manifest).images()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("synthetic", "openmoji", "all"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and a random model: a check of the script"
    )
    parser.add_argument(
        "--n", type=int, default=None, help="synthetic vectors (default 1,000,000; 20,000 quick)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument(
        "--dup-share", type=float, default=0.01, help="share of synthetic items in planted groups"
    )
    parser.add_argument(
        "--model", default=None, help="model for the OpenMoji part (default: the demo's run/best)"
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-corpus-", dir=args.work) as tmp:
        work = Path(tmp)
        for part, fn in (("synthetic", synthetic), ("openmoji", openmoji)):
            if args.part not in (part, "all"):
                continue
            folder = work / part
            folder.mkdir()
            table = fn(args, folder) + "\n"
            print(table, flush=True)
            if not args.quick:
                RESULTS.mkdir(parents=True, exist_ok=True)
                (RESULTS / f"corpus_{part}.md").write_text(table, encoding="utf-8")
                print(f"written to {RESULTS / f'corpus_{part}.md'}")


if __name__ == "__main__":
    main()
