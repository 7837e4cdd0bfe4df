"""Engine helpers: the prefetching thread keeps order, re-raises errors, and stops when abandoned."""

from __future__ import annotations

import threading

import pytest

from retrieval.embed.engines import _prefetch, pick_device


def test_prefetch_keeps_order():
    assert list(_prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_prefetch_reraises_in_the_consumer():
    def broken():
        yield 1
        raise RuntimeError("decoder exploded")

    it = _prefetch(broken(), depth=2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="decoder exploded"):
        next(it)


def test_abandoned_prefetch_stops_its_thread():
    it = _prefetch(iter(range(10_000)), depth=2)
    assert next(it) == 0
    it.close()
    assert not any(t.name == "embed-prefetch" and t.is_alive() for t in threading.enumerate())


def test_pick_device_prefers_what_is_given():
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) in ("cpu", "cuda")
