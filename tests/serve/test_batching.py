"""Concurrent queries are encoded together: fewer model calls than queries, same vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval.serve.encoding import ModelRunner

from ._fakes import KeywordEncoder, keyword_vector


class SlowEncoder(KeywordEncoder):
    """The keyword encoder, taking 20 ms per call and recording its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.active = 0
        self.overlap = False
        self._lock = threading.Lock()

    def encode_texts(self, texts, **kwargs):
        with self._lock:
            self.active += 1
            self.overlap |= self.active > 1
        self.sizes.append(len(texts))
        time.sleep(0.02)
        out = super().encode_texts(texts)
        with self._lock:
            self.active -= 1
        if "boom" in texts:
            raise RuntimeError("boom")
        return out


def test_concurrent_calls_are_batched_and_results_go_back_to_their_callers():
    model = SlowEncoder()
    runner = ModelRunner(model, "slow", batch_size=8)
    words = ["red", "green", "blue", "yellow", "cat", "dog", "car", "tree"] * 5
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda w: runner.encode_texts([w]), words))
    for word, out in zip(words, outs):
        np.testing.assert_array_equal(np.asarray(out), keyword_vector(word)[None, :])
    assert sum(model.sizes) == len(words)
    assert max(model.sizes) <= 8
    assert len(model.sizes) < len(words) / 2  # batching happened
    assert not model.overlap  # one model call at a time


def test_a_failing_batch_fails_its_callers_only():
    runner = ModelRunner(SlowEncoder(), "slow", batch_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        runner.encode_texts(["boom"])
    np.testing.assert_array_equal(
        np.asarray(runner.encode_texts(["red", "cat"])),
        np.stack([keyword_vector("red"), keyword_vector("cat")]),
    )
