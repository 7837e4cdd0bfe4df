"""Deterministic data order: a seeded permutation (or weighted draw) per epoch, split into global
batches and sharded over ranks, with augmentation randomness fixed per item.

Everything random about the data is a pure function of ``(seed, epoch, position)``, so a resumed
run skips the batches it already trained on and sees exactly the same remaining batches and crops
as an uninterrupted run, with any number of DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

_MASK63 = (1 << 63) - 1


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the item at ``position`` of ``epoch``'s order (SplitMix64-style mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) & _MASK63
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK63
    x ^= x >> 29
    return x


def sample_weights(pairs: Sequence[Any], column: str) -> torch.Tensor:
    """``[N]`` float64 sampling weights from ``pair.metadata[column]``.

    Numbers are used as given (non-negative, not all zero). Strings or booleans are class labels:
    each pair gets ``1 / count(label)``, so every class is drawn equally often.
    """
    values = []
    for i, pair in enumerate(pairs):
        if column not in pair.metadata:
            raise ValueError(
                f"pair {i} ({pair.image}) has no metadata field {column!r} for sample_weight_column; "
                f"fields present: {sorted(pair.metadata)}"
            )
        values.append(pair.metadata[column])
    if not values:
        return torch.zeros(0, dtype=torch.float64)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        weights = torch.tensor(values, dtype=torch.float64)
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"sample weights in {column!r} must be finite, non-negative and not all zero "
                f"(received min {weights.min().item()}, max {weights.max().item()})"
            )
        return weights
    labels = [str(v) for v in values]
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


def epoch_order(n: int, epoch: int, seed: int, weights: torch.Tensor | None = None) -> list[int]:
    """Indices of the ``n`` pairs in the order of ``epoch``: a permutation, or ``n`` weighted draws
    with replacement (``WeightedRandomSampler``) when ``weights`` is given."""
    generator = torch.Generator().manual_seed(item_seed(seed, epoch, -1))
    if weights is not None:
        return list(WeightedRandomSampler(weights, n, replacement=True, generator=generator))
    return torch.randperm(n, generator=generator).tolist()


def plan_epoch(n: int, batch_size: int, world_size: int, rank: int, grad_accum: int) -> list[list[list[int]]]:
    """This rank's share of one epoch: optimizer steps -> micro-batches -> positions in the order.

    Consecutive global batches of ``batch_size * world_size`` positions are cut from the epoch's
    order of ``n`` items and rank ``r`` takes slice ``r`` of each, so the ranks together see exactly
    the batch one process with ``batch_size * world_size`` would. A last incomplete global batch is
    dropped (small batches weaken in-batch negatives), as are micro-batches that do not fill an
    accumulation step; an epoch shorter than one step still makes one step of what it has, and a
    dataset smaller than one global batch gives one batch shared out over the ranks.
    """
    global_batch = batch_size * world_size
    n_batches = n // global_batch
    if n_batches == 0:
        per_rank = math.ceil(n / world_size)
        return [[list(range(n))[rank * per_rank : (rank + 1) * per_rank]]] if n else []
    micro = [
        list(range(b * global_batch + rank * batch_size, b * global_batch + (rank + 1) * batch_size))
        for b in range(n_batches)
    ]
    if n_batches < grad_accum:
        return [micro]
    n_steps = n_batches // grad_accum
    return [micro[s * grad_accum : (s + 1) * grad_accum] for s in range(n_steps)]


class SeededItems(Dataset):
    """Wraps a map-style dataset; ``self[(index, seed)]`` runs ``dataset[index]`` with torch's CPU
    generator seeded by ``seed`` and restores the caller's generator state afterwards.

    Augmentation must draw from torch's generator (as the :mod:`retrieval.data` transforms do) to be
    reproducible. Only the CPU generator is touched: ``torch.manual_seed`` would also queue lazy
    seeding of every accelerator, which costs milliseconds per item.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


def compose_hard_batches(
    neighbours: np.ndarray,
    pair_image: Sequence[int],
    captions: Sequence[str],
    base_order: Sequence[int],
    batch_size: int,
    fraction: float = 0.5,
) -> list[int]:
    """An epoch order whose consecutive ``batch_size`` chunks are neighbourhoods in the current space.

    ``neighbours[p]`` lists image rows near the caption of pair ``p`` (nearest first, ``-1``
    padded, its own positives already left out); ``pair_image[p]`` is the image row of pair ``p``.
    Anchors are taken in ``base_order`` (the epoch's random order); each batch starts from an
    unused anchor and grows breadth-first through the pairs of its neighbour images until
    ``fraction`` of the batch is filled, then takes the next unused pairs of ``base_order``
    (random, easier negatives). A batch never holds two pairs of one image nor two equal
    captions, so no in-batch negative is a positive of another row, while pairs allow it; only
    when nothing else is left does a batch take such a pair (the loss masks same-image rows).
    Returns a permutation of ``range(len(base_order))``.
    """
    n = len(base_order)
    pairs_of: dict[int, list[int]] = {}
    for p in base_order:  # the pairs of each image, in the epoch's random order
        pairs_of.setdefault(int(pair_image[p]), []).append(int(p))
    used = np.zeros(n, dtype=bool)
    order: list[int] = []
    cursor = 0
    hard_target = max(1, round(fraction * batch_size))

    def fits(p: int, images: set[int], texts: set[str]) -> bool:
        return not used[p] and int(pair_image[p]) not in images and captions[p] not in texts

    for anchor in base_order:
        if used[anchor]:
            continue
        batch, images, texts = [int(anchor)], {int(pair_image[anchor])}, {captions[anchor]}
        used[anchor] = True
        frontier = [int(anchor)]
        while frontier and len(batch) < hard_target:
            x = frontier.pop(0)
            for row in neighbours[x]:
                if row < 0 or len(batch) >= hard_target:
                    break
                p = next((q for q in pairs_of.get(int(row), ()) if fits(q, images, texts)), None)
                if p is not None:
                    batch.append(p)
                    used[p] = True
                    images.add(int(pair_image[p]))
                    texts.add(captions[p])
                    frontier.append(p)
        while len(batch) < batch_size and cursor < n:  # the rest: the next unused pairs of the random order
            p = int(base_order[cursor])
            cursor += 1
            if fits(p, images, texts):
                batch.append(p)
                used[p] = True
                images.add(int(pair_image[p]))
                texts.add(captions[p])
        if len(batch) < batch_size:  # nothing compatible left: accept what remains
            rest = [int(p) for p in base_order if not used[p]][: batch_size - len(batch)]
            used[rest] = True
            batch.extend(rest)
            cursor = 0
        order.extend(batch)
    assert sorted(order) == list(range(n)), "hard-negative order must be a permutation"
    return order


def _cached_vectors(model: Any, cache: Any, keys: Sequence[str], device: Any, batch: int = 1024) -> np.ndarray:
    """Unit vectors of ``keys`` from a locked tower's cached outputs, through the heads in eval mode."""
    from retrieval import encoding

    with encoding.inference(model, device), torch.no_grad():
        parts = [cache(model, keys[i : i + batch]).cpu() for i in range(0, len(keys), batch)]
    return torch.cat(parts).numpy().astype(np.float32)  # [N, D]


@dataclasses.dataclass(frozen=True)
class MinedNeighbours:
    """What :func:`mine_neighbours` found, the input of :func:`compose_hard_batches`."""

    neighbours: np.ndarray  # [N, k] image rows near each pair's caption, positives left out, -1 padded
    pair_image: list[int]  # [N] image row of each pair
    captions: list[str]  # [N] caption of each pair


def mine_neighbours(
    model: Any,
    pairs: Sequence[Any],
    k: int = 16,
    *,
    device: Any = None,
    text_cache: Any = None,
    image_cache: Any = None,
) -> MinedNeighbours:
    """Encode the training pairs with ``model`` (their images once each, and their captions) and find
    each caption's ``k`` nearest other images in an :class:`indexes.Collection` of the image vectors
    (:func:`retrieval.mining.hard_negatives`): its own image and images with the exact same caption
    are left out. ``text_cache`` / ``image_cache`` (:mod:`retrieval.train.frozen`) stand in for
    locked towers: only the projection heads run, in eval mode."""
    from retrieval import encoding
    from retrieval.mining import caption_positives, hard_negatives

    keys: dict[str, int] = {}
    pair_image = [keys.setdefault(p.image_id, len(keys)) for p in pairs]
    first_path: dict[int, str] = {}
    for p, row in zip(pairs, pair_image):
        first_path.setdefault(row, p.image)
    captions = [p.caption for p in pairs]
    paths = [first_path[r] for r in range(len(keys))]
    if image_cache is not None and all(path in image_cache.index for path in paths):
        images = _cached_vectors(model, image_cache, paths, device)  # [I, D]
    else:
        images = encoding.encode_images(model, paths, device=device).vectors  # [I, D]
    if text_cache is not None:
        texts = _cached_vectors(model, text_cache, captions, device)  # [N, D]
    else:
        texts = encoding.encode_texts(model, captions, device=device).vectors  # [N, D]
    near = hard_negatives(texts, images, caption_positives(captions, pair_image), k)  # [N, k]
    return MinedNeighbours(near, pair_image, captions)
