"""Retrieval metrics against a slow numpy reference, ties, chunking and input errors."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import retrieval.evaluate._ranking as ranking_mod
import retrieval.evaluate.metrics as metrics_mod
import retrieval.evaluate.zeroshot as zeroshot_mod
from retrieval.evaluate import (
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rankings_from_embeddings,
)

from support.reference import reference_metrics

KS = (1, 2, 3, 5, 10)


def assert_same(got: dict[str, float], want: dict[str, float], atol: float = 1e-12) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=atol), key


def tied_case(seed: int, n_texts: int, n_images: int, levels: int = 4):
    """Scores on a coarse grid (many ties); captions per image between 0 and several."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n_texts, n_images)).astype(np.float64) / levels
    text_to_image = rng.integers(0, n_images, size=n_texts)
    return scores, text_to_image


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_ties(seed):
    scores, g = tied_case(seed, n_texts=23, n_images=9)
    assert_same(retrieval_metrics(scores, g, ks=KS), reference_metrics(scores, g, ks=KS))


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_continuous_scores_torch_input(seed):
    rng = np.random.default_rng(100 + seed)
    scores = rng.normal(size=(40, 12)).astype(np.float32)
    g = rng.integers(0, 12, size=40)
    got = retrieval_metrics(torch.from_numpy(scores), torch.from_numpy(g), ks=KS)
    assert_same(got, reference_metrics(scores, g, ks=KS))
    assert_same(got, retrieval_metrics(scores, g.tolist(), ks=KS))


def test_many_captions_per_image_uses_the_sort_path(monkeypatch):
    scores, g = tied_case(7, n_texts=60, n_images=3, levels=3)  # ~20 captions per image
    want = reference_metrics(scores, g, ks=KS)
    assert_same(retrieval_metrics(scores, g, ks=KS), want)
    monkeypatch.setattr(ranking_mod, "LOOP_MAX_RELEVANT", 0)
    assert_same(retrieval_metrics(scores, g, ks=KS), want)


def test_constant_scores_get_the_worst_rank():
    m = retrieval_metrics(np.zeros((4, 4)), [0, 1, 2, 3], ks=(1, 4))
    assert m["t2i/R@1"] == 0.0
    assert m["t2i/R@4"] == 1.0
    assert m["t2i/median_rank"] == 4.0
    assert m["i2t/mean_rank"] == 4.0


def test_perfect_scores():
    m = retrieval_metrics(np.eye(5) + 0.5, range(5), ks=(1,))
    for key, value in m.items():
        if key.endswith("n_queries"):
            assert value == 5.0
        elif "rank" in key:
            assert value == 1.0
        else:
            assert value == 1.0, key


def test_image_without_captions_is_left_out_of_i2t():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]])
    m = retrieval_metrics(scores, [0, 1], ks=(1,))
    assert m["i2t/n_queries"] == 2.0
    assert m["t2i/n_queries"] == 2.0
    assert m["i2t/R@1"] == 1.0


def test_k_larger_than_candidates_is_a_hit():
    m = retrieval_metrics(np.array([[0.1, 0.9]]), [0], ks=(1, 50))
    assert m["t2i/R@1"] == 0.0
    assert m["t2i/R@50"] == 1.0
    assert m["t2i/mAP@50"] == pytest.approx(0.5)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 4096])
def test_chunked_equals_dense_exact_ties(chunk_size):
    # small integer vectors: every inner product is exact in float32, so ties are real ties
    rng = np.random.default_rng(chunk_size)
    text = rng.integers(-2, 3, size=(37, 6)).astype(np.float32)
    image = rng.integers(-2, 3, size=(11, 6)).astype(np.float32)
    image[5] = image[2]  # duplicate images tie exactly
    g = rng.integers(0, 11, size=37)
    dense = retrieval_metrics(text @ image.T, g, ks=KS)
    chunked = retrieval_metrics_from_embeddings(text, image, g, ks=KS, chunk_size=chunk_size)
    assert_same(chunked, dense)
    assert_same(dense, reference_metrics(text.astype(np.float64) @ image.T.astype(np.float64), g, ks=KS))


@pytest.mark.parametrize("chunk_size", [5, 32, 1000])
def test_chunked_equals_dense_random_unit_vectors(chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    text = torch.nn.functional.normalize(torch.randn(150, 16, generator=gen), dim=1)
    image = torch.nn.functional.normalize(torch.randn(60, 16, generator=gen), dim=1)
    g = torch.randint(0, 60, (150,), generator=gen)
    text = torch.nn.functional.normalize(text + 0.8 * image[g], dim=1)  # make retrieval non-trivial
    dense = retrieval_metrics(text @ image.T, g)
    chunked = retrieval_metrics_from_embeddings(text.numpy(), image, g.numpy(), chunk_size=chunk_size)
    assert_same(chunked, dense, atol=1e-2)  # float32 rounding may swap near-equal scores


def test_top_hits_are_the_best_candidates():
    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(20, 4)), rng.normal(size=(9, 4))
    g = rng.integers(0, 9, size=20)
    t2i, i2t = retrieval_rankings_from_embeddings(text, image, g, chunk_size=4, top_n=3)
    scores = text @ image.T
    assert t2i.top_ids.shape == (20, 3)
    np.testing.assert_array_equal(t2i.top_ids, np.argsort(-scores, axis=1)[:, :3])
    np.testing.assert_allclose(i2t.top_scores, -np.sort(-scores.T, axis=1)[:, :3])
    np.testing.assert_array_equal(t2i.first_rank, t2i.pair_rank)


def test_inputs_are_not_mutated():
    scores = np.array([[0.3, 0.3], [0.1, 0.2]])
    g = np.array([1, 0])
    before = scores.copy(), g.copy()
    retrieval_metrics(scores, g)
    np.testing.assert_array_equal(scores, before[0])
    np.testing.assert_array_equal(g, before[1])


@pytest.mark.parametrize(
    ("scores", "g", "match"),
    [
        (np.zeros((0, 3)), [], "at least one text"),
        (np.zeros((2, 0)), [0, 0], "at least one"),
        (np.zeros((2, 3)), [0, 3], r"text_to_image\[1\] = 3 is out of range"),
        (np.zeros((2, 3)), [-1, 0], r"text_to_image\[0\] = -1"),
        (np.zeros((2, 3)), [0], "text_to_image has shape"),
        (np.zeros((2, 3)), [0.5, 1], "integer"),
        (np.zeros(3), [0, 1, 2], "expected \\[n_texts, n_images\\]"),
        (np.array([[np.nan, 1.0]]), [0], "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(scores, g, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(scores, g)


def test_bad_ks_and_embedding_dims():
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(np.eye(2), [0, 1], ks=(0,))
    with pytest.raises(ValueError, match="ks is empty"):
        retrieval_metrics(np.eye(2), [0, 1], ks=())
    with pytest.raises(ValueError, match="dim 3 but image_emb has dim 4"):
        retrieval_metrics_from_embeddings(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics_from_embeddings(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1], chunk_size=0)


@pytest.mark.parametrize("module", [metrics_mod, zeroshot_mod])
def test_docstring_examples(module):
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("loop_max", [0, 2, 100])
def test_chunked_counting_paths_with_many_captions_and_captionless_images(monkeypatch, loop_max):
    rng = np.random.default_rng(loop_max)
    text = rng.integers(-1, 2, size=(90, 5)).astype(np.float32)
    image = rng.integers(-1, 2, size=(12, 5)).astype(np.float32)
    g = rng.integers(0, 9, size=90)  # images 9..11 have no caption; ~10 captions per image
    want = reference_metrics(text.astype(np.float64) @ image.T.astype(np.float64), g, ks=KS)
    monkeypatch.setattr(ranking_mod, "LOOP_MAX_RELEVANT", loop_max)
    for chunk_size in (4, 13, 200):
        got = retrieval_metrics_from_embeddings(text, image, g, ks=KS, chunk_size=chunk_size)
        assert_same(got, want)
    assert want["i2t/n_queries"] == 9


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n_texts=st.integers(1, 12),
    n_images=st.integers(1, 6),
    levels=st.integers(1, 4),
    chunk_size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(n_texts, n_images, levels, chunk_size, seed):
    rng = np.random.default_rng(seed)
    text = rng.integers(0, levels + 1, size=(n_texts, 3)).astype(np.float32)  # exact products, many ties
    image = rng.integers(0, levels + 1, size=(n_images, 3)).astype(np.float32)
    g = rng.integers(0, n_images, size=n_texts)
    want = reference_metrics(text.astype(np.float64) @ image.T.astype(np.float64), g, ks=(1, 2, 5))
    assert_same(retrieval_metrics(text @ image.T, g, ks=(1, 2, 5)), want)
    assert_same(retrieval_metrics_from_embeddings(text, image, g, ks=(1, 2, 5), chunk_size=chunk_size), want)
