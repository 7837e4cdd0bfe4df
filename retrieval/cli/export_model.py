"""``retrieval export-model MODEL --to transformers|open_clip|onnx --out DIR [--model-card ...]``."""

from __future__ import annotations

import argparse

from retrieval.cli.options import MODEL_HELP

EPILOG = """\
targets:
  transformers  a CLIPModel / SiglipModel folder with processor and tokenizer (models whose towers are a
                transformers CLIP or SigLIP, e.g. fine-tuned with --init); loads in plain transformers
                and in sentence-transformers
  open_clip     open_clip_config.json + open_clip_model.safetensors + tokenizer (CLIP-layout models):
                open_clip.create_model_and_transforms('local-dir:DIR'), or 'hf-hub:ORG/NAME' once uploaded
  onnx          image and text graphs with their preprocessing (any architecture)
Every export is loaded back and must embed as the model does (transformers within 1e-5, open_clip 1e-4).
Publish: --model-card writes README.md (Hugging Face card format; --report DIR adds the evaluation table of
`retrieval eval ... --out DIR`); then `hf upload ORG/NAME DIR` (nothing here touches the network)."""


def register(sub: argparse._SubParsersAction) -> None:
    from retrieval.export import EXPORT_TARGETS

    p = sub.add_parser(
        "export-model",
        help="export a model to transformers, open_clip or ONNX, optionally with a model card",
        description="Write MODEL in another library's format to --out, checked to embed as the toolkit does.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--to", required=True, choices=sorted(EXPORT_TARGETS), dest="target", help="the target format"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="a new or empty folder (an earlier export is replaced)"
    )
    p.add_argument("--model-card", action="store_true", help="write README.md, a Hugging Face model card")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="evaluation report for the card (retrieval eval --out DIR)",
    )
    p.add_argument(
        "--repo-id",
        default=None,
        metavar="ORG/NAME",
        help="the hub repo the folder is meant for (card, open_clip tokenizer)",
    )
    p.add_argument(
        "--data-description", default=None, metavar="TEXT", help="what the model was trained on, for the card"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrieval.export import ExportOptions, export_model

    if (args.report or args.data_description) and not args.model_card:
        raise ValueError("--report and --data-description go into the model card: add --model-card")
    options = ExportOptions(
        model_card=args.model_card,
        report=args.report,
        repo_id=args.repo_id,
        data_description=args.data_description,
    )
    result = export_model(args.model, args.target, args.out, options)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_difference.items())
    print(
        f"exported to {result.path} ({result.target}): {len(result.files)} files; largest difference {diffs} "
        f"(tolerance {result.tolerance:.0e})"
    )
    return 0
