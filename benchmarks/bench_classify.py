"""The fusion classifier on a trained demo model, against zero-shot classification by prompts.

Trains a classifier for each fusion (concatenation, attention) on the OpenMoji train split
to predict a label column (``group`` by default, or ``subgroup``), with the demo's twin
encoders frozen, and measures top-1 accuracy on the test split (emoji unseen in training)
from the image only, the text only and both, beside zero-shot classification by prompts
(the nearest class-name prompt embedding) on the same examples. Writes the full report
(per-class table, confusion matrices) of the best fusion too.

    python benchmarks/bench_classify.py                       # the demo in the toolkit cache
    python benchmarks/bench_classify.py --label-column subgroup

Prints a table and writes benchmarks/results/classify.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "classify.md"


def main() -> None:
    from retrieval.classify import evaluate_classifier, train_classifier, write_classification_report
    from retrieval.config import ClassifyConfig
    from retrieval.data import read_pairs
    from retrieval.model import TwinEncoder
    from retrieval.paths import cache_dir

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", default=None, help="finished demo folder (default: the toolkit cache)")
    parser.add_argument("--label-column", default="group")
    parser.add_argument(
        "--report", default=None, help="report folder of the best fusion (default: in the demo)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    demo = Path(args.demo) if args.demo else cache_dir("demo")
    record = json.loads((demo / "demo.json").read_text(encoding="utf-8"))
    root = Path(record["settings"]["dataset"])
    model = TwinEncoder.load(record["train"]["model_dir"], device="cpu").eval()
    train_pairs, test_pairs = (read_pairs(str(root / f"{s}.jsonl")) for s in ("train", "test"))
    rows, best = [], None
    for fusion in ("concat", "attention"):
        t0 = time.process_time()
        clf = train_classifier(
            model, train_pairs, ClassifyConfig(label_column=args.label_column, fusion=fusion)
        )
        cpu = time.process_time() - t0
        report = evaluate_classifier(model, clf, test_pairs, args.label_column)
        rows.append((fusion, report, cpu))
        if best is None or report.accuracy["both"] > best[1].accuracy["both"]:
            best = (fusion, report)
    assert best is not None
    out_dir = Path(args.report) if args.report else demo / f"classify-{args.label_column}"
    write_classification_report(best[1], out_dir)
    acc = rows[0][1].accuracy
    lines = [
        f"# Fusion classifier: `{args.label_column}` of unseen OpenMoji test emoji",
        "",
        f"Model `{record['train']['model_dir']}`; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. {len(rows[0][1].classes)} classes; top-1 accuracy on the test split.",
        "",
        "| classifier | image | text | image + text | training CPU s |",
        "|---|---:|---:|---:|---:|",
        f"| zero-shot by prompts (baseline) | {acc['zeroshot/image']:.3f} | {acc['zeroshot/text']:.3f} "
        f"| {acc['zeroshot/both']:.3f} | 0 |",
    ]
    for fusion, report, cpu in rows:
        a = report.accuracy
        lines.append(
            f"| {fusion} fusion | {a['image']:.3f} | {a['text']:.3f} | {a['both']:.3f} | {cpu:.0f} |"
        )
    lines += ["", f"Full report of the {best[0]} fusion (per class, confusion matrices): `{out_dir}`."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
