"""``retrieval classify train|eval|predict``: a fusion classifier on the shared space of a model."""

from __future__ import annotations

import argparse
import functools

from retrieval.cli.options import MODEL_HELP, config_option, given
from retrieval.config import ClassifyConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify images, texts or both into a label column with a classifier on the model's space",
        description="Train a fusion classifier (concatenation or attention) on a model's frozen image and "
        "text vectors to predict a label column of the manifest, measure it against zero-shot "
        "classification by prompts, or predict the class of an image and/or a text.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="fit a classifier on labelled pairs")
    train.add_argument("data", help="labelled pairs (manifest, image folder or .tar shards)")
    train.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    train.add_argument("--out", required=True, metavar="DIR", help="classifier folder to write")
    train.add_argument("--split", default=None, help="only rows of this split of DATA")
    option = functools.partial(config_option, train, ClassifyConfig)
    option("label_column", "--label-column", help="metadata column with the class")
    option("fusion", "--fusion", help="how image and text vectors are fused")
    option("epochs", "--epochs", help="passes over the labelled pairs")
    option("seed", "--seed", help="seed")
    train.set_defaults(func=run_train)

    ev = actions.add_parser(
        "eval", help="accuracy, per-class report and confusion matrices, against zero-shot"
    )
    ev.add_argument("data", help="labelled pairs")
    ev.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    ev.add_argument("--classifier", required=True, metavar="DIR", help="classifier folder")
    ev.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    ev.add_argument("--split", default=None, help="only rows of this split of DATA")
    ev.add_argument(
        "--label-column", default=None, help="metadata column with the class (default: training's)"
    )
    ev.set_defaults(func=run_eval)

    pr = actions.add_parser("predict", help="class probabilities of an image, a text, or both")
    pr.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    pr.add_argument("--classifier", required=True, metavar="DIR", help="classifier folder")
    pr.add_argument("--image", default=None, help="image path")
    pr.add_argument("--text", default=None, help="text")
    pr.add_argument("--top", type=int, default=5, help="classes shown")
    pr.set_defaults(func=run_predict)


def _pairs(data: str, split: str | None):  # type: ignore[no-untyped-def]
    from retrieval.data import read_pairs

    return read_pairs(data, split=split)


def run_train(args: argparse.Namespace) -> int:
    from retrieval.classify import train_classifier
    from retrieval.model import load_model

    config = ClassifyConfig().replace(**given(args, ClassifyConfig))
    classifier = train_classifier(load_model(args.model), _pairs(args.data, args.split), config)
    classifier.save(args.out)
    config.save(f"{args.out}/train_config.json")
    print(f"{len(classifier.classes)} classes ({config.fusion} fusion) -> {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from retrieval.classify import FusionClassifier, evaluate_classifier, write_classification_report
    from retrieval.model import load_model

    classifier = FusionClassifier.load(args.classifier)
    column = args.label_column
    if column is None:
        meta = Path(args.classifier) / "train_config.json"
        column = (
            json.loads(meta.read_text())["label_column"] if meta.exists() else ClassifyConfig().label_column
        )
    report = evaluate_classifier(
        load_model(args.model), classifier, _pairs(args.data, args.split), column
    )
    out = write_classification_report(report, args.out)
    for inputs in ("image", "text", "both"):
        print(
            f"{inputs:>5}: accuracy {report.accuracy[inputs]:.4f} (zero-shot {report.accuracy['zeroshot/' + inputs]:.4f})"
        )
    print(f"report: {out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from retrieval.classify import FusionClassifier, predict
    from retrieval.model import load_model

    if args.image is None and args.text is None:
        raise ValueError("give --image, --text, or both")
    model = load_model(args.model)
    classifier = FusionClassifier.load(args.classifier)
    image = model.encode_images([args.image]) if args.image else None
    text = model.encode_texts([args.text]) if args.text else None
    probs = predict(classifier, image, text)[0]
    for i in probs.argsort()[::-1][: args.top]:
        print(f"{probs[i]:.3f}  {classifier.classes[i]}")
    return 0
