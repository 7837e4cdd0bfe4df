"""A tour of the Python API: train, embed, search and evaluate on the OpenMoji emoji.

    python examples/tour.py                 # the default recipe on all emoji (a few minutes on 2 CPU cores)
    python examples/tour.py --limit 200 --epochs 2 --tiny   # a smoke run in seconds

Expected output (measured on 2 CPU cores in 2.5 minutes; numbers vary a little with the machine):

    trained: completed after 300 steps -> ~/.cache/siamese-retrieval/tour/run/best
    embedded 890, already done 0, skipped 0 (none) in 1.6s -> ~/.cache/siamese-retrieval/tour/collection ...
    'pink heart' -> 🩷 pink heart (0.58), 🧡 orange heart (0.53), 🎁 wrapped gift (0.50)
    0032-FE0F-20E3.png -> keycap ten (0.53), keycap 10 (0.53), keycap 4 (0.51)
    test split: t2i R@1 0.11 R@10 0.43 | i2t R@1 0.08 R@10 0.41   (chance R@10: 0.025)

The test split holds emoji never seen in training (nor any of their skin-tone or gender variants).
``--tiny`` swaps the default recipe for a tiny from-scratch model (only for smoke tests:
its recall is near chance).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.config import EmbedConfig, ModelConfig, TrainConfig
from retrieval.data import read_pairs
from retrieval.datasets import build_openmoji
from retrieval.embed import embed_corpus
from retrieval.evaluate import evaluate_model
from retrieval.model import TwinEncoder
from retrieval.paths import cache_dir
from retrieval.search import Searcher
from retrieval.train import train

TINY = ModelConfig(
    text_tower="gru", embed_dim=32, image_size=32, image_width=8, image_layers=1, text_width=32
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train, embed, search and evaluate on OpenMoji")
    parser.add_argument("--out", default=str(cache_dir("tour")), help="folder for the run and the collection")
    parser.add_argument("--limit", type=int, default=None, help="use only this many emoji")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="most epochs (validation stops earlier)")
    parser.add_argument("--time-budget", type=float, default=300.0, help="seconds of training at most")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the default recipe")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. data: standard JSONL manifests (image path + caption + metadata) for train / val / test
    data = build_openmoji(limit=args.limit, progress=False)

    # 2. train the default recipe (TrainConfig's defaults), validating on val after every epoch
    config = TrainConfig(train_data=str(data.train), val_data=str(data.val), out_dir=str(out / "run"),
                         epochs=args.epochs, time_budget=args.time_budget, progress=False)  # fmt: skip
    if args.tiny:
        config = config.replace(model=TINY, batch_size=32)
    result = train(config, resume=True)  # resume=True: a rerun continues (or reuses) the run in out/run
    print(f"trained: {result.status} after {result.steps} steps -> {result.model_dir}")
    model = TwinEncoder.load(result.model_dir)

    # 3. embed the test emoji (images and captions) into a collection on disk
    collection = out / "collection"
    summary = embed_corpus(
        model, str(data.test), collection, EmbedConfig(progress=False), model_dir=result.model_dir
    )
    print(summary)

    # 4. search both ways
    with Searcher(model, str(collection)) as searcher:
        hits = searcher.text_to_image("pink heart", k=3)
        print(
            "'pink heart' ->",
            ", ".join(f"{h.metadata['emoji']} {h.metadata['name']} ({h.score:.2f})" for h in hits),
        )
        test = read_pairs(str(data.test))
        image = test.images()[0]
        hits = searcher.image_to_text(image, k=3)
        print(Path(image).name, "->", ", ".join(f"{h.metadata['caption']} ({h.score:.2f})" for h in hits))

    # 5. evaluate on the test split: Recall@K both ways
    m = evaluate_model(model, test).metrics
    print(f"test split: t2i R@1 {m['t2i/R@1']:.2f} R@10 {m['t2i/R@10']:.2f} | "
          f"i2t R@1 {m['i2t/R@1']:.2f} R@10 {m['i2t/R@10']:.2f}   "
          f"(chance R@10: {min(1.0, 10 / len(test.images())):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
