"""Deterministic data order: a seeded permutation (or weighted draw) per epoch, split into global
batches and sharded over ranks, with augmentation randomness fixed per item.

Everything random about the data is a pure function of ``(seed, epoch, position)``, so a resumed
run skips the batches it already trained on and sees exactly the same remaining batches and crops
as an uninterrupted run, with any number of DataLoader workers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

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
