"""Engines that turn items into vectors, batch by batch.

Both yield :class:`EncodedBatch` objects in item order; the caller commits them to shards.

Both encode through :mod:`retrieval.encoding` (batching, decode prefetch, device, mode, broken
images).

* ``local``: in this process; ``DataLoader`` workers read, decode and transform images while the
  main process runs the forward passes (with ``num_workers=0``, a helper thread does it).
* ``ray``: Ray Data, ``from_items`` over the item list and ``map_batches`` with an actor pool
  of encoders (each actor holds one copy of the model); for a cluster pass its address. The
  actors open the image paths themselves, so on a cluster they must be visible on every node
  (a shared file system), and the ``retrieval`` package installed there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from retrieval import encoding
from retrieval.embed.items import Item
from retrieval.encoding import Encoded


@dataclasses.dataclass
class EncodedBatch:
    """Vectors for some items of one modality; ``failed`` items were skipped."""

    modality: str  # "image" | "text"
    items: list[Item]  # items that got a vector, in order
    vectors: np.ndarray  # [len(items), D] float32, unit norm
    failed: list[tuple[Item, str, str]]  # (item, reason, detail)


def _batch(modality: str, items: Sequence[Item], encoded: Encoded) -> EncodedBatch:
    """An engine batch from what :mod:`retrieval.encoding` returned for ``items``."""
    return EncodedBatch(
        modality,
        [items[i] for i in encoded.positions],
        encoded.vectors.numpy(),
        [(items[s.position], s.reason, s.detail) for s in encoded.skipped],
    )


# -- local ------------------------------------------------------------------------------------
def local_images(
    model: Any,
    items: Sequence[Item],
    batch_size: int,
    num_workers: int,
    device: str,
    runtime: str | None = None,
    feature_cache: Any = None,
) -> Iterator[EncodedBatch]:
    """Image batches encoded in this process; ``num_workers`` DataLoader processes (or, with 0, a
    helper thread and its decoding pool) prepare the next batches while the current one runs its
    forward pass; the tower runs on ``runtime`` and its features come from ``feature_cache`` when
    it has them."""
    refs = [it.ref for it in items]
    batches = encoding.image_batches(
        model,
        refs,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        skip_broken=True,
        runtime=runtime,
        feature_cache=feature_cache,
    )
    for encoded in batches:
        yield _batch("image", items, encoded)


def local_texts(
    model: Any,
    items: Sequence[Item],
    batch_size: int,
    device: str,
    runtime: str | None = None,
    feature_cache: Any = None,
) -> Iterator[EncodedBatch]:
    """Caption batches encoded in this process; a helper thread tokenizes the next batches; the text
    tower's features come from ``feature_cache`` when it has them."""
    for encoded in encoding.text_batches(
        model,
        [it.ref for it in items],
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        feature_cache=feature_cache,
    ):
        yield _batch("text", items, encoded)


# -- ray --------------------------------------------------------------------------------------
class RayEncoder:
    """Ray Data actor: holds one model copy (on ``device``, in eval mode), encodes batches of rows
    ``{"pos", "ref", "modality"}`` through :mod:`retrieval.encoding`."""

    def __init__(self, model_ref: list[Any], device: str, runtime: str | None = None) -> None:
        import ray
        import torch

        self.model = ray.get(model_ref[0])  # this actor's own copy: placed once, not per batch
        if isinstance(self.model, torch.nn.Module):
            self.model.to(device).eval()
        self.device = device
        self.runtime = runtime

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        refs = [str(r) for r in batch["ref"]]
        is_text = np.asarray([str(m) == "text" for m in batch["modality"]], dtype=bool)
        vectors = np.zeros((len(refs), int(self.model.embed_dim)), dtype=np.float32)  # [B, D]
        ok = np.zeros(len(refs), dtype=bool)
        reasons = [""] * len(refs)
        details = [""] * len(refs)
        for rows, encode in (
            (np.flatnonzero(is_text), functools.partial(encoding.encode_texts, runtime=self.runtime)),
            (
                np.flatnonzero(~is_text),
                functools.partial(encoding.encode_images, skip_broken=True, runtime=self.runtime),
            ),
        ):
            if not len(rows):
                continue
            # device=None: the model already sits on the actor's device
            encoded = encode(self.model, [refs[j] for j in rows], batch_size=len(rows), device=None)
            good = rows[encoded.positions]
            vectors[good] = encoded.vectors.numpy()
            ok[good] = True
            for s in encoded.skipped:
                reasons[rows[s.position]], details[rows[s.position]] = s.reason, s.detail
        return {
            "pos": np.asarray(batch["pos"], dtype=np.int64),
            "vector": vectors,
            "ok": ok,
            "reason": np.array(reasons, dtype=object),
            "detail": np.array(details, dtype=object),
        }


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the running Ray, else connect to ``address`` / start a local one (shut down afterwards)."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    elif os.environ.get("RAY_TMPDIR"):
        kwargs["_temp_dir"] = os.environ["RAY_TMPDIR"]
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def ray_batches(
    model: Any,
    items: Sequence[Item],
    batch_size: int,
    num_actors: int,
    device: str,
    runtime: str | None = None,
) -> Iterator[EncodedBatch]:
    """Encode ``items`` with a Ray Data actor pool (one pool for both modalities); batches come
    back in item order, each of one modality."""
    import ray
    import ray.data

    if not items:
        return
    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True  # shards get the same items as with the local engine
    ctx.enable_progress_bars = False
    try:
        model_ref = ray.put(model)
        rows = [{"pos": i, "ref": it.ref, "modality": it.modality} for i, it in enumerate(items)]
        blocks = max(1, min(math.ceil(len(rows) / batch_size), 64 * max(1, num_actors)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            RayEncoder,
            fn_constructor_kwargs={"model_ref": [model_ref], "device": device, "runtime": runtime},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, num_actors)),
            num_cpus=1,
            num_gpus=1 if device.startswith("cuda") else 0,
            udf_modifying_row_count=False,
        )
        for out in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            positions = out["pos"].tolist()
            rows_ok = out["ok"]
            for modality in ("image", "text"):
                mine = [j for j, p in enumerate(positions) if items[p].modality == modality]
                if not mine:
                    continue
                good = [j for j in mine if rows_ok[j]]
                bad = [
                    (items[positions[j]], str(out["reason"][j]), str(out["detail"][j]))
                    for j in mine
                    if not rows_ok[j]
                ]
                vectors = np.asarray(out["vector"][good], dtype=np.float32).reshape(len(good), -1)  # [b, D]
                yield EncodedBatch(modality, [items[positions[j]] for j in good], vectors, bad)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = previous
