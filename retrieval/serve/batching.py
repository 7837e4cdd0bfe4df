"""Concurrent queries batched into one model call; a model shared by every collection that uses it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol


class Encoder(Protocol):
    """What the service needs from a model (a :class:`retrieval.model.TwinEncoder` fits)."""

    embed_dim: int  # size of the vectors it emits

    def encode_texts(self, texts: Sequence[str]) -> Any: ...  # [N, D] unit rows (Tensor or array)

    def encode_images(self, images: Sequence[Any]) -> Any: ...  # [N, D] unit rows

    def fingerprint(self) -> str: ...


class _Batcher:
    """Merge concurrent calls of ``fn(items) -> rows`` into one call over all their items.

    One call runs at a time; requests that arrive while it runs queue up and the next caller
    to get the turn runs them all together (at most ``max_items`` per call). An idle server
    adds no delay; a busy one encodes many queries per forward pass, which is what a CPU or a
    GPU is fastest at. Serialising the calls also keeps tokenizers, whose per-call state
    concurrent calls could trample, to one thread at a time.

    A merged call that raises is retried caller by caller, so a query that cannot be encoded fails
    only its own caller; the others get their rows.
    """

    def __init__(self, fn: Callable[[list[Any]], Any], max_items: int) -> None:
        self._fn = fn
        self._max = max(1, max_items)
        self._pending: list[tuple[list[Any], Future[Any]]] = []
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()
        self.calls = 0  # model calls made (for tests and benchmarks)

    def __call__(self, items: Sequence[Any]) -> Any:
        mine: Future[Any] = Future()
        with self._queue_lock:
            self._pending.append((list(items), mine))
        while not mine.done():
            with self._turn:
                if mine.done():
                    break
                with self._queue_lock:
                    batch, size = [], 0
                    while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max):
                        entry = self._pending.pop(0)
                        batch.append(entry)
                        size += len(entry[0])
                self._run(batch)
        return mine.result()

    def _run(self, batch: list[tuple[list[Any], Future[Any]]]) -> None:
        flat = [item for items, _ in batch for item in items]
        try:
            self.calls += 1
            rows = self._fn(flat)  # [sum n, D]
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            # One bad query (a text the tokenizer refuses, an image the transform cannot take) must
            # fail only itself: run each caller's items on their own to find out whose they are.
            for items, future in batch:
                self._run_alone(items, future)
            return
        except BaseException as exc:  # interrupted: nobody gets an answer
            for _, future in batch:
                future.set_exception(exc)
            return
        start = 0
        for items, future in batch:
            future.set_result(rows[start : start + len(items)])  # [n, D]
            start += len(items)

    def _run_alone(self, items: list[Any], future: Future[Any]) -> None:
        try:
            self.calls += 1
            future.set_result(self._fn(items))  # [n, D]
        except Exception as exc:
            future.set_exception(exc)


class ModelRunner:
    """A model shared by every collection that uses it, as the :class:`~retrieval.search.Searcher`
    sees it: the fingerprint is computed once (hashing weights on every reload would be slow),
    and concurrent queries are encoded in batches (see :class:`_Batcher`), texts and images
    each one call at a time.
    """

    def __init__(self, model: Encoder, source: str, batch_size: int = 32) -> None:
        self.model = model
        self.source = source
        self._fingerprint = str(model.fingerprint())
        self.embed_dim = int(getattr(model, "embed_dim", 0) or 0)
        self._texts = _Batcher(
            lambda items: model.encode_texts(items, batch_size=max(1, len(items))), batch_size
        )
        self._images = _Batcher(
            lambda items: model.encode_images(items, batch_size=max(1, len(items))), batch_size
        )

    @property
    def match_head(self) -> Any:
        """The model's match head (re-ranking), or None."""
        return getattr(self.model, "match_head", None)

    def fingerprint(self) -> str:
        return self._fingerprint

    def encode_texts(self, texts: Sequence[str], **kwargs: Any) -> Any:
        return self._texts(texts)  # [N, D]

    def encode_images(self, images: Sequence[Any], **kwargs: Any) -> Any:
        return self._images(images)  # [N, D]

    @property
    def calls(self) -> int:
        """Model calls made so far (fewer than queries when batching worked)."""
        return self._texts.calls + self._images.calls


def load_model(
    name: str, device: str | None = None, batch_size: int = 32, runtime: str = "auto"
) -> ModelRunner:
    """Load the model ``name`` names (a toolkit or transformers CLIP/SigLIP folder, or a hub id:
    :func:`retrieval.model.load_model`; safetensors + JSON, no pickle) behind a runner, its towers
    running on ``runtime``."""
    from retrieval.model import load_model as load_twin

    model = load_twin(name, device=device, runtime=runtime)
    return ModelRunner(model, name, batch_size)
