"""Concurrent queries are encoded together: fewer model calls than queries, same vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval.serve.batching import ModelRunner

from support.keywords import KeywordEncoder, keyword_vector

WORDS = ["red", "green", "blue", "yellow", "cat", "dog", "car", "tree"] * 5


class GatedEncoder(KeywordEncoder):
    """The keyword encoder; its first call waits until every other query is queued behind it
    (so the test does not depend on thread timing), and it records its batch sizes."""

    def __init__(self, waiting_for: int) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.active = 0
        self.overlap = False
        self.runner: ModelRunner | None = None
        self._waiting_for = waiting_for
        self._lock = threading.Lock()

    def encode_texts(self, texts, **kwargs):
        with self._lock:
            self.active += 1
            self.overlap |= self.active > 1
        if not self.sizes and self.runner is not None:
            deadline = time.monotonic() + 30
            while len(self.runner._texts._pending) < self._waiting_for and time.monotonic() < deadline:
                time.sleep(0.005)
        self.sizes.append(len(texts))
        out = super().encode_texts(texts)
        with self._lock:
            self.active -= 1
        if "boom" in texts:
            raise RuntimeError("boom")
        return out


def test_concurrent_calls_are_batched_and_results_go_back_to_their_callers():
    model = GatedEncoder(waiting_for=len(WORDS) - 1)
    runner = model.runner = ModelRunner(model, "gated", batch_size=8)
    with ThreadPoolExecutor(len(WORDS)) as pool:
        outs = list(pool.map(lambda w: runner.encode_texts([w]), WORDS))
    for word, out in zip(WORDS, outs):
        np.testing.assert_array_equal(np.asarray(out), keyword_vector(word)[None, :])
    assert sum(model.sizes) == len(WORDS)
    assert model.sizes[0] == 1 and max(model.sizes) == 8  # the first alone, then full batches
    assert len(model.sizes) == 1 + -(-(len(WORDS) - 1) // 8)
    assert not model.overlap  # one model call at a time


def test_a_failing_batch_fails_its_callers_only():
    runner = ModelRunner(GatedEncoder(waiting_for=0), "gated", batch_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        runner.encode_texts(["boom"])
    out = runner.encode_texts(["red", "cat"])
    np.testing.assert_array_equal(np.asarray(out), np.stack([keyword_vector("red"), keyword_vector("cat")]))
