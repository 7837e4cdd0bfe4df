"""Engines that turn items into vectors, batch by batch.

Both yield :class:`EncodedBatch` objects in item order; the caller commits them to shards.

* ``local``: a torch ``DataLoader`` whose workers read, decode and transform images while the
  main process runs the forward passes (with ``num_workers=0``, a helper thread does it).
* ``ray``: Ray Data, ``from_items`` over the item list and ``map_batches`` with an actor pool
  of encoders (each actor holds one copy of the model); for a cluster pass its address. The
  actors open the image paths themselves, so on a cluster they must be visible on every node
  (a shared file system), and the ``retrieval`` package installed there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from retrieval.embed.items import Item


@dataclasses.dataclass
class EncodedBatch:
    """Vectors for some items of one modality; ``failed`` items were skipped."""

    modality: str  # "image" | "text"
    items: list[Item]  # items that got a vector, in order
    vectors: np.ndarray  # [len(items), D] float32, unit norm
    failed: list[tuple[Item, str, str]]  # (item, reason, detail)


def pick_device(device: str | None) -> str:
    """``device`` as given, else ``"cuda"`` when available, else ``"cpu"``."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _unit(vectors: Any) -> np.ndarray:
    array = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # [B, 1]
    return array / np.maximum(norms, 1e-12)


@contextlib.contextmanager
def inference_on(model: Any, device: str) -> Iterator[Any]:
    """Run ``model`` in eval mode on ``device``; its mode and device are restored afterwards."""
    import torch

    if not isinstance(model, torch.nn.Module):
        yield model
        return
    first = next(model.parameters(), None)
    original = first.device if first is not None else None
    was_training = model.training
    model.eval()
    if original is not None and original != torch.device(device):
        model.to(device)
    try:
        with torch.inference_mode():
            yield model
    finally:
        if original is not None and original != torch.device(device):
            model.to(original)
        model.train(was_training)


def load_transformed(ref: str, transform: Callable[[Any], Any]) -> tuple[Any, str, str]:
    """(tensor, "", "") for a readable image, else (None, reason, detail)."""
    from retrieval.data import ImageDecodeError, load_image

    try:
        image = load_image(ref)
    except ImageDecodeError as exc:
        return None, "decode_error", str(exc)
    try:
        return transform(image), "", ""
    except Exception as exc:  # a transform failing on a decoded image is a per-item problem
        return None, "transform_error", f"{type(exc).__name__}: {exc}"


def encode_pixels(model: Any, pixels: Any, device: str) -> np.ndarray:
    """[B, 3, H, W] tensor -> [B, D] float32 unit vectors."""
    return _unit(model.image_features(pixels.to(device)))  # [B, D]


def encode_captions(model: Any, captions: Sequence[str], device: str) -> np.ndarray:
    """Captions -> [B, D] float32 unit vectors (call inside :func:`inference_on`)."""
    if hasattr(model, "text_features") and hasattr(model, "tokenize"):
        return _unit(model.text_features(model.tokenize(list(captions))))  # [B, D]
    return _unit(model.encode_texts(list(captions), batch_size=max(1, len(captions)), device=device))


# -- local ------------------------------------------------------------------------------------
class _ImageDataset:
    """torch Dataset over image items: (position, tensor | None, reason, detail)."""

    def __init__(self, refs: Sequence[str], transform: Callable[[Any], Any]) -> None:
        self.refs = refs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[int, Any, str, str]:
        tensor, reason, detail = load_transformed(self.refs[i], self.transform)
        return i, tensor, reason, detail


def _collate(batch: list[tuple[int, Any, str, str]]) -> tuple[list[int], Any, list[tuple[int, str, str]]]:
    import torch

    good = [(i, t) for i, t, _, _ in batch if t is not None]
    bad = [(i, reason, detail) for i, t, reason, detail in batch if t is None]
    pixels = torch.stack([t for _, t in good]) if good else None  # [B, 3, H, W]
    return [i for i, _ in good], pixels, bad


def local_images(
    model: Any, items: Sequence[Item], batch_size: int, num_workers: int, device: str
) -> Iterator[EncodedBatch]:
    from torch.utils.data import DataLoader

    dataset = _ImageDataset([it.ref for it in items], model.image_transform())
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    # With num_workers=0 the loader decodes in a helper thread (PIL and torch release the GIL),
    # so decoding the next batch overlaps the forward pass of this one.
    batches = loader if num_workers > 0 else _prefetch(loader, depth=2)
    with inference_on(model, device):
        for positions, pixels, bad in batches:
            vectors = encode_pixels(model, pixels, device) if pixels is not None else _empty(model)
            yield EncodedBatch(
                "image",
                [items[i] for i in positions],
                vectors,
                [(items[i], reason, detail) for i, reason, detail in bad],
            )


def _prefetch(iterable: Any, depth: int) -> Iterator[Any]:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; exceptions are re-raised here."""
    import queue
    import threading

    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="embed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def local_texts(model: Any, items: Sequence[Item], batch_size: int, device: str) -> Iterator[EncodedBatch]:
    chunks = (list(items[start : start + batch_size]) for start in range(0, len(items), batch_size))
    if not (hasattr(model, "text_features") and hasattr(model, "tokenize")):
        with inference_on(model, device):
            for chunk in chunks:
                yield EncodedBatch("text", chunk, encode_captions(model, [it.ref for it in chunk], device), [])
        return
    # A helper thread tokenizes the next batches while this one runs its forward pass.
    tokenized = _prefetch(((chunk, model.tokenize([it.ref for it in chunk])) for chunk in chunks), depth=2)
    with inference_on(model, device):
        for chunk, tokens in tokenized:
            yield EncodedBatch("text", chunk, _unit(model.text_features(tokens)), [])  # [B, D]


def _empty(model: Any) -> np.ndarray:
    return np.zeros((0, int(model.embed_dim)), dtype=np.float32)


# -- ray --------------------------------------------------------------------------------------
class RayEncoder:
    """Ray Data actor: holds one model copy, encodes batches of rows ``{"pos", "ref", "modality"}``."""

    def __init__(self, model_ref: list[Any], device: str) -> None:
        import ray

        self.model = ray.get(model_ref[0])
        self.device = device
        self.transform: Callable[[Any], Any] | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        refs = [str(r) for r in batch["ref"]]
        is_text = np.asarray([str(m) == "text" for m in batch["modality"]], dtype=bool)
        vectors = np.zeros((len(refs), int(self.model.embed_dim)), dtype=np.float32)  # [B, D]
        ok = is_text.copy()
        reasons = [""] * len(refs)
        details = [""] * len(refs)
        with inference_on(self.model, self.device):
            texts = np.flatnonzero(is_text)
            if len(texts):
                vectors[texts] = encode_captions(self.model, [refs[j] for j in texts], self.device)
            good: list[int] = []
            tensors = []
            for j in np.flatnonzero(~is_text):
                if self.transform is None:
                    self.transform = self.model.image_transform()
                tensor, reasons[j], details[j] = load_transformed(refs[j], self.transform)
                if tensor is not None:
                    good.append(int(j))
                    tensors.append(tensor)
            if good:
                vectors[good] = encode_pixels(self.model, torch.stack(tensors), self.device)
                ok[good] = True
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
    model: Any, items: Sequence[Item], batch_size: int, num_actors: int, device: str
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
            fn_constructor_kwargs={"model_ref": [model_ref], "device": device},
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
