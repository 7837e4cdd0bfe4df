"""Your own images and captions: from a folder (or a CSV) to a collection ready to serve.

Your data, in either layout (paths in a CSV are relative to the CSV):

    my_images/cat.jpg  my_images/cat.txt  ...   (one caption per line of the .txt; an optional
                                                 cat.json with metadata fields)
    pairs.csv:  image,caption
                photos/cat.jpg,a cat asleep on a sofa

Then:

    python examples/your_own_data.py my_images --out my_search       # or: pairs.csv --out my_search
    retrieval serve my_search/collection --model my_search/run/best --media-root my_images

No data at hand? ``--make-sample DIR`` writes 200 OpenMoji emoji as PNGs with sidecar captions
into DIR, in the layout above.

Expected output (with ``--make-sample my_images`` first; 17 s on 2 CPU cores, lines shortened):

    287 pairs (200 images), 0 skipped: 181 images to train on, 19 to validate with
    trained: completed after 20 steps -> my_search/run/best
    embedded 487, already done 0, skipped 0 (none) in 1.1s -> my_search/collection (errors: ...)
    ready: retrieval serve my_search/collection --model my_search/run/best --media-root my_images

Without ``--out`` the manifests, the run and the collection go to ``your_own_data/`` in the
toolkit cache (``retrieval.paths.cache_dir``).

``--tiny`` trains a tiny from-scratch model instead of the default recipe (smoke tests only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

from retrieval.config import EmbedConfig, ModelConfig, TrainConfig
from retrieval.data import read_pairs
from retrieval.embed import embed_corpus
from retrieval.model import TwinEncoder
from retrieval.paths import cache_dir
from retrieval.train import train

TINY = ModelConfig(
    text_tower="gru", embed_dim=32, image_size=32, image_width=8, image_layers=1, text_width=32
)


def make_sample(folder: Path, n: int = 200) -> None:
    """Copy ``n`` rendered OpenMoji emoji into ``folder`` with a sidecar .txt of captions each."""
    from retrieval.datasets import build_openmoji

    data = build_openmoji(limit=n, progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    captions: dict[str, list[str]] = {}
    for manifest in data.manifests.values():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            source = manifest.parent / row["image"]
            captions.setdefault(str(source), []).append(row["caption"])
    for source, texts in captions.items():
        shutil.copyfile(source, folder / Path(source).name)
        (folder / Path(source).with_suffix(".txt").name).write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"wrote {len(captions)} images with sidecar captions into {folder}")


def split_manifests(source: str, out: Path, val_share: float = 0.1) -> tuple[Path, Path | None]:
    """Read the pairs, put about ``val_share`` of the images (chosen by a hash of the path) in a
    validation manifest, and write both as JSONL with absolute image paths."""
    pairs = read_pairs(source)
    if len(pairs) == 0:
        raise SystemExit(f"no usable image-caption pairs in {source} ({len(pairs.skipped)} skipped)")
    images = pairs.images()
    in_val = {
        im for im in images if int(hashlib.sha256(im.encode()).hexdigest(), 16) % 1000 < val_share * 1000
    }
    if len(images) < 20:  # too few to spare a validation set
        in_val = set()
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for pair in pairs.pairs:
        row = {**pair.metadata, "image": os.path.abspath(pair.image), "caption": pair.caption}
        rows["val" if pair.image in in_val else "train"].append(json.dumps(row, ensure_ascii=False))
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(
        f"{len(pairs)} pairs ({len(images)} images), {len(pairs.skipped)} skipped: "
        f"{len(images) - len(in_val)} images to train on, {len(in_val)} to validate with"
    )
    return out / "train.jsonl", (out / "val.jsonl" if in_val else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="from your images and captions to a served collection")
    parser.add_argument(
        "source", nargs="?", help="image folder with sidecar .txt captions, or a CSV/JSONL manifest"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the manifests, the run and the collection (default: in the toolkit cache)",
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="most epochs (validation stops earlier)")
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds of training at most")
    parser.add_argument(
        "--make-sample", metavar="DIR", help="write a sample image folder (OpenMoji) and stop"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the default recipe")
    args = parser.parse_args(argv)
    if args.make_sample:
        make_sample(Path(args.make_sample))
        return
    if not args.source:
        parser.error("give an image folder or a manifest (or --make-sample DIR to create one)")
    out = Path(args.out) if args.out else cache_dir("your_own_data")

    train_manifest, val_manifest = split_manifests(args.source, out / "data")
    config = TrainConfig(
        train_data=str(train_manifest),
        val_data=str(val_manifest) if val_manifest else None,
        out_dir=str(out / "run"),
        epochs=args.epochs,
        time_budget=args.time_budget,
        progress=False,
    )
    if args.tiny:
        config = config.replace(model=TINY, batch_size=32)
    result = train(config, resume=True)
    print(f"trained: {result.status} after {result.steps} steps -> {result.model_dir}")

    model = TwinEncoder.load(result.model_dir)
    collection = out / "collection"
    print(
        embed_corpus(model, args.source, collection, EmbedConfig(progress=False), model_dir=result.model_dir)
    )
    media = args.source if Path(args.source).is_dir() else str(Path(args.source).parent)
    print(f"ready: retrieval serve {collection} --model {result.model_dir} --media-root {media}")


if __name__ == "__main__":
    main()
