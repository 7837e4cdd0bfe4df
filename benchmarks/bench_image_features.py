"""Which features of the pretrained EfficientNet-Lite image tower should the default recipe use?

The default recipe locks both pretrained towers and trains only the projection heads, so the only
choice on the image side is what the tower hands them. This benchmark encodes OpenMoji's train /
val / test images once with the ImageNet EfficientNet-Lite0 (at ``--size`` px) and the captions once
with the locked MiniLM tower, then, for each feature set, fits the recipe's heads (image: dropout,
MLP to 1,024, dropout, linear; text: dropout, linear; CLIP loss, AdamW lr 3e-4, weight decay 0.1,
batch 128, the same image's other captions masked) on the cached features for ``--epochs`` epochs
and scores the test split (families unseen in training) at the epoch with the best validation
mean recall. Every part is layer-normalised (no learned scale) before the parts are concatenated,
as the tower does. Several head seeds per feature set, and their mean, because one test recall
has a standard error of about 0.025 here.

Feature sets:

* ``head-mean``: the classifier's input, the average of the head's 1,280-channel map (the usual
  "pretrained CNN feature");
* ``head-mean+max``: with the head map's maximum;
* ``stages+head``: the averages of the last three stages' maps and of the head's, and the head's
  maximum (what ``EfficientNetLiteImageTower`` returns).

Prints a table and writes ``benchmarks/results/image_features.md``.

    python benchmarks/bench_image_features.py [--size 224] [--seeds 0,1,2,3] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import ModelConfig
from retrieval.data import read_pairs
from retrieval.datasets import build_openmoji
from retrieval.encoding import decoded_batches
from retrieval.evaluate import retrieval_metrics_from_embeddings
from retrieval.towers import build_text_tower
from retrieval.towers.efficientnet import build_efficientnet_lite

RESULTS = Path(__file__).resolve().parent / "results" / "image_features.md"
PARTS = ("s5_mean", "s6_mean", "s7_mean", "head_mean", "head_max")
FEATURE_SETS = {
    "head-mean": ("head_mean",),
    "head-mean+max": ("head_mean", "head_max"),
    "stages+head": PARTS,
}
KEYS = ("t2i/R@1", "t2i/R@10", "i2t/R@10")


def image_parts(images: list[str], size: int) -> dict[str, torch.Tensor]:
    """Each part of the tower's features for every image: its output split by ``tower.parts``."""
    tower = build_efficientnet_lite("lite0", size).eval()
    transform = tower.image_transform(False)
    features = []
    with torch.no_grad():
        for _positions, pixels, skipped in decoded_batches(images, transform, 64):
            if skipped:
                raise ValueError(f"unreadable images: {[s.item for s in skipped]}")
            features.append(tower(pixels))  # [b, output_dim]
    return dict(zip(PARTS, torch.cat(features).split(list(tower.parts), dim=-1), strict=True))


def text_features(captions: list[str]) -> torch.Tensor:
    tower = build_text_tower(ModelConfig()).eval()  # the locked MiniLM tower of every recipe
    parts = []
    with torch.no_grad():
        for start in range(0, len(captions), 256):
            tokens = tower.tokenize(captions[start : start + 256])
            parts.append(tower(tokens["input_ids"], tokens["attention_mask"]))
    return torch.cat(parts)


def fit_heads(data: dict[str, Any], parts: tuple[str, ...], seed: int, epochs: int) -> dict[str, float]:
    """Fit the recipe's heads on cached features; test metrics at the best validation epoch."""
    torch.manual_seed(seed)
    feats = {s: torch.cat([data[s]["image"][p] for p in parts], dim=-1) for s in ("train", "val", "test")}
    image_head = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(feats["train"].shape[1], 1024), nn.GELU(), nn.Dropout(0.5), nn.Linear(1024, 256)
    )
    text_head = nn.Sequential(nn.Dropout(0.5), nn.Linear(data["train"]["text"].shape[1], 256, bias=False))
    log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    params = [*image_head.parameters(), *text_head.parameters(), log_scale]
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.98))

    def score(split: str) -> dict[str, float]:
        image_head.eval()
        text_head.eval()
        with torch.no_grad():
            images = F.normalize(image_head(feats[split]), dim=-1)
            texts = F.normalize(text_head(data[split]["text"]), dim=-1)
        image_head.train()
        text_head.train()
        m = retrieval_metrics_from_embeddings(texts, images, data[split]["t2i"], ks=(1, 5, 10))
        m["mean_recall"] = float(np.mean([m[f"{d}/R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]))
        return m

    pair_image = torch.as_tensor(data["train"]["t2i"])
    best: tuple[float, dict[str, float], int] = (-1.0, {}, -1)
    for epoch in range(epochs):
        order = torch.randperm(len(pair_image))
        for start in range(0, len(order), 128):
            rows = order[start : start + 128]
            owners = pair_image[rows]
            zi = F.normalize(image_head(feats["train"][owners]), dim=-1)
            zt = F.normalize(text_head(data["train"]["text"][rows]), dim=-1)
            logits = log_scale.exp().clamp(max=100) * zt @ zi.T  # [B, B]
            same = (owners[:, None] == owners[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)
            logits = logits.masked_fill(same, -1e4)  # another caption of the same image is no negative
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = score("val")["mean_recall"]
        if val > best[0]:
            best = (val, score("test"), epoch + 1)
    return {"val": best[0], "epoch": best[2], **{k: best[1][k] for k in KEYS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input side of the tower (its native 224)")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated head seeds")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    dataset = build_openmoji(progress=False)
    started = time.perf_counter()
    data: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        pairs = read_pairs(getattr(dataset, split))
        data[split] = {
            "image": image_parts(pairs.images(), args.size),
            "text": text_features(pairs.captions()),
            "t2i": pairs.text_to_image(),
        }
    encode_s = time.perf_counter() - started
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name, parts in FEATURE_SETS.items():
        for seed in seeds:
            result = fit_heads(data, parts, seed, args.epochs)
            rows.append({"features": name, "seed": seed, **result})
            print(
                f"{name:14s} seed {seed}: epoch {result['epoch']:2d} val {result['val']:.3f} "
                + " ".join(f"{k} {result[k]:.3f}" for k in KEYS),
                flush=True,
            )
    counts = ", ".join(f"{split}: {len(data[split]['t2i'])} captions" for split in data)
    lines = [
        "# Features of the pretrained image tower for the locked-tower recipe",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}. OpenMoji "
        f"({counts}); EfficientNet-Lite0 at "
        f"{args.size} px; encoding every image and caption once took {encode_s:.0f} s. Heads fitted "
        f"{args.epochs} epochs on the cached features; test = unseen families, at the best validation "
        "epoch (val = validation mean of the six R@K).",
        "",
        "| features | dims | seed | best epoch | val | test t2i R@1 | test t2i R@10 | test i2t R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dims = {n: sum(data["train"]["image"][p].shape[1] for p in parts) for n, parts in FEATURE_SETS.items()}
    for r in rows:
        lines.append(
            f"| {r['features']} | {dims[r['features']]} | {r['seed']} | {r['epoch']} | {r['val']:.3f} | "
            + " | ".join(f"{r[k]:.3f}" for k in KEYS)
            + " |"
        )
    for name in FEATURE_SETS:
        picked = [r for r in rows if r["features"] == name]
        means = {k: float(np.mean([r[k] for r in picked])) for k in ("val", *KEYS)}
        lines.append(
            f"| **{name}** | {dims[name]} | mean | - | {means['val']:.3f} | "
            + " | ".join(f"{means[k]:.3f}" for k in KEYS)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
