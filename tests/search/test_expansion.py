"""Query expansion through a paired query bank: against a slow reference, in the Searcher and the
evaluator, and what a bank without pairs or bad settings get."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexes import Collection
from retrieval.data import read_pairs
from retrieval.search import Expansion, Searcher, build_query_bank, expand_queries
from retrieval.search.hubness import QueryBank, query_bank_path


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _bank(rng: np.random.Generator, n_images: int, n_texts: int, dim: int) -> QueryBank:
    """Random unit rows; some images have several captions, the last one may have none."""
    captioned = max(1, n_images - int(rng.integers(0, 2)))
    pairs = np.concatenate([np.arange(captioned), rng.integers(0, captioned, n_texts - captioned)])
    rng.shuffle(pairs)
    texts = _unit(rng.standard_normal((n_texts, dim)))
    images = _unit(rng.standard_normal((n_images, dim)))
    return QueryBank({"text": texts, "image": images}, "fp", pairs)


def _reference(q: np.ndarray, bank: QueryBank, modality: str, how: Expansion) -> np.ndarray:
    """One query at a time, in float64: the nearest keys by a full sort, softmax, the partners' sum."""
    texts, images = bank.vectors["text"].astype(np.float64), bank.vectors["image"].astype(np.float64)
    if modality == "text":
        keys, values = texts, images[bank.pairs]
    else:
        owners = sorted(set(bank.pairs.tolist()))
        keys = images[owners]
        values = np.stack([texts[bank.pairs == i].sum(0) for i in owners])
        values /= np.linalg.norm(values, axis=1, keepdims=True)
    out = []
    for row in q.astype(np.float64):
        row = row / np.linalg.norm(row)
        sims = keys @ row
        near = np.argsort(-sims, kind="stable")[: how.k]
        w = np.exp(sims[near] / how.temperature)
        w /= w.sum()
        moved = row + how.weight * (w[:, None] * values[near]).sum(0)
        out.append(moved / np.linalg.norm(moved))
    return np.asarray(out)


@pytest.mark.parametrize("seed", range(6))
def test_expansion_matches_a_slow_reference(seed):
    """Random banks (several captions per image), both modalities, k beyond the bank, small chunks."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(3, 12))
    n_images = int(rng.integers(1, 9))
    bank = _bank(rng, n_images, n_images + int(rng.integers(0, 6)), dim)
    how = Expansion(k=int(rng.integers(1, 15)), weight=float(rng.uniform(0.1, 2)), temperature=float(rng.uniform(0.02, 1)))
    q = rng.standard_normal((int(rng.integers(1, 20)), dim)).astype(np.float32) * 3  # not unit: normalised inside
    before = q.copy()
    for modality in ("text", "image"):
        got = expand_queries(q, bank, modality, how, chunk_size=int(rng.integers(1, 5)))
        assert got.dtype == np.float32 and got.shape == q.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, _reference(q, bank, modality, how), atol=2e-5)
    np.testing.assert_array_equal(q, before)  # the caller's array is not changed


def test_weight_zero_and_empty_queries():
    bank = _bank(np.random.default_rng(0), 4, 6, 5)
    q = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(expand_queries(q, bank, "text", Expansion(weight=0.0)), _unit(q), atol=1e-6)
    assert expand_queries(np.zeros((0, 5), np.float32), bank, "image", Expansion()).shape == (0, 5)


def test_a_query_the_model_misplaces_borrows_its_neighbours_images():
    """The query for item 0 lies nearer item 1, but the bank caption nearest to it belongs to an image
    like item 0: the expanded query finds item 0."""
    items = _unit(np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2]]))
    query = _unit(np.array([[0.45, 0.55, 0.7]]))
    assert int(np.argmax(query @ items.T)) == 1
    bank = QueryBank(
        {"text": _unit(np.array([[0.4, 0.5, 0.75], [0.0, 0.2, -1.0]])), "image": _unit(np.array([[1.0, 0.0, 0.1], [0.0, 1.0, 0.0]]))},
        pairs=np.array([0, 1]),
    )  # fmt: skip
    moved = expand_queries(query, bank, "text", Expansion(k=1, weight=0.5))
    assert int(np.argmax(moved @ items.T)) == 0


def test_banks_without_pairs_and_bad_settings_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    texts, images = _unit(rng.standard_normal((4, 3))), _unit(rng.standard_normal((2, 3)))
    bare = QueryBank({"text": texts, "image": images})
    with pytest.raises(ValueError, match="does not record which caption"):
        expand_queries(texts, bare, "text", Expansion())
    paired = QueryBank({"text": texts, "image": images}, pairs=[0, 1, 1, 0])
    with pytest.raises(ValueError, match="dim 3, the queries 5"):
        expand_queries(np.ones((1, 5), np.float32), paired, "text", Expansion())
    with pytest.raises(ValueError, match="'text' or 'image'"):
        expand_queries(texts, paired, "audio", Expansion())
    with pytest.raises(ValueError, match="4 ints"):
        QueryBank({"text": texts, "image": images}, pairs=[0, 1])
    with pytest.raises(ValueError, match=r"image rows 0..1; received values 0..2"):
        QueryBank({"text": texts, "image": images}, pairs=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="4 ints"):
        QueryBank({"text": texts, "image": images}, pairs=[0.0, 1.0, 1.0, 0.0])
    for bad in ({"k": 0}, {"k": True}, {"k": 2.5}, {"weight": -1.0}, {"weight": float("nan")}, {"weight": "0.5"},
                {"temperature": 0.0}, {"temperature": None}, {"temperature": float("inf")}):
        with pytest.raises(ValueError, match="Expansion"):
            Expansion(**bad)
    # pairs survive a save; a bank saved without them loads without them
    paired.save(tmp_path / "p.npz")
    bare.save(tmp_path / "b.npz")
    np.testing.assert_array_equal(QueryBank.load(tmp_path / "p.npz").pairs, [0, 1, 1, 0])
    assert QueryBank.load(tmp_path / "b.npz").pairs is None


@pytest.fixture
def paired_collection(tmp_path):
    rng = np.random.default_rng(5)
    dim = 6
    images, texts = _unit(rng.standard_normal((8, dim))), _unit(rng.standard_normal((8, dim)))
    path = tmp_path / "mixed.coll"
    with Collection.create(path, dim=dim, index="Flat") as coll:
        coll.add(np.concatenate([images, texts]), metadata=[{"modality": "image"}] * 8 + [{"modality": "text"}] * 8)
        coll.save()
    bank = _bank(rng, 5, 9, dim)
    bank.save(query_bank_path(path))
    return path, bank, images, texts


def test_searcher_expands_cross_modal_queries_only(paired_collection):
    path, bank, images, texts = paired_collection
    queries = _unit(np.random.default_rng(9).standard_normal((4, images.shape[1])))
    how = Expansion(k=3, weight=1.0, temperature=0.1)
    with Searcher(None, path, expansion=how) as searcher:
        t2i = searcher.search_vectors(queries, k=3, modality="image", query_modality="text")
        i2t = searcher.search_vectors(queries, k=3, modality="text", query_modality="image")
        t2t = searcher.search_vectors(queries, k=3, modality="text", query_modality="text")
    for hits, q, pool, offset in (
        (t2i, expand_queries(queries, bank, "text", how), images, 0),
        (i2t, expand_queries(queries, bank, "image", how), texts, 8),
        (t2t, queries, texts, 8),
    ):
        for row, expected in zip(hits, q):
            sims = pool @ expected
            assert [h.id for h in row] == [offset + int(i) for i in np.argsort(-sims)[:3]]
            np.testing.assert_allclose([h.cosine for h in row], np.sort(sims)[::-1][:3], atol=1e-5)


def test_searcher_expands_a_search_of_the_only_modality_but_not_a_mixed_one(tmp_path, paired_collection):
    """``modality=None`` searches what a one-modality collection holds: expanded when that is the other
    modality; on a mixed collection it searches both, unexpanded."""
    path, bank, images, _ = paired_collection
    queries = _unit(np.random.default_rng(2).standard_normal((3, images.shape[1])))
    how = Expansion(k=3, weight=1.0)
    only = tmp_path / "images.coll"
    with Collection.create(only, dim=images.shape[1], index="Flat") as coll:
        coll.add(images, metadata=[{"modality": "image"}] * len(images))
        coll.save()
    bank.save(query_bank_path(only))
    expanded = expand_queries(queries, bank, "text", how)
    with Searcher(None, only, expansion=how) as searcher:
        hits = searcher.search_vectors(queries, k=2, query_modality="text")
    assert [[h.id for h in row] for row in hits] == [list(np.argsort(-(images @ q))[:2]) for q in expanded]
    with Searcher(None, path, expansion=how) as searcher, Searcher(None, path) as plain:
        mixed = searcher.search_vectors(queries, k=4, query_modality="text")
        assert [[h.id for h in r] for r in mixed] == [[h.id for h in r] for r in plain.search_vectors(queries, k=4)]


def test_searcher_refuses_a_bank_without_pairs_or_of_another_width(paired_collection):
    path, bank, _, _ = paired_collection
    QueryBank(bank.vectors, bank.fingerprint).save(query_bank_path(path))
    with pytest.raises(ValueError, match="rebuild it"):
        Searcher(None, path, expansion=Expansion())
    wide = {m: np.concatenate([v, v], axis=1) / np.sqrt(2) for m, v in bank.vectors.items()}
    QueryBank(wide, None, bank.pairs).save(query_bank_path(path))
    with pytest.raises(ValueError, match="12-d vectors"):
        Searcher(None, path, expansion=Expansion())


def test_built_banks_link_each_caption_to_its_image(tmp_path, fake_model, corpus_rows):
    """Two captions of one image, a broken image (left out with its caption), and a draw of fewer
    pairs than the set holds."""
    rows = [*corpus_rows[:6], {**corpus_rows[0], "caption": "another caption of the first"}]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append({"image": str(tmp_path / "broken.png"), "caption": "a broken image"})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_pairs(str(manifest))
    for max_queries in (100, 5, 2):
        bank = build_query_bank(fake_model, pairs, max_queries=max_queries, seed=1)
        texts, images = bank.vectors["text"], bank.vectors["image"]
        assert len(texts) == len(bank.pairs) <= min(max_queries, 7)
        # as many images as before pairs were drawn (the broken one may be among them)
        assert min(max_queries, 7) - 1 <= len(images) <= min(max_queries, 7)
        by_caption = {p.caption: p.image for p in pairs}
        captions = [c for c in pairs.captions() if c != "a broken image"]
        expected_text = fake_model.encode_texts(captions).numpy()
        for row, image_row in zip(texts, bank.pairs):
            caption = captions[int(np.argmin(np.linalg.norm(expected_text - row, axis=1)))]
            want = fake_model.encode_images([by_caption[caption]]).numpy()[0]
            np.testing.assert_allclose(images[image_row], want, atol=1e-5)


class _RandomVectors:
    """Random unit vectors per caption and per image path (no ties), with the encoder interface."""

    embed_dim = 8

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(3)

    def _rows(self, keys):
        import torch

        for key in keys:
            if str(key) not in self.table:
                self.table[str(key)] = _unit(self.rng.standard_normal(self.embed_dim))
        return torch.from_numpy(np.stack([self.table[str(key)] for key in keys]))

    def fingerprint(self) -> str:
        return "random-vectors"

    def encode_texts(self, texts, **kwargs):
        return self._rows(texts)

    def encode_images(self, images, **kwargs):
        return self._rows(images)


def test_evaluator_ranks_expanded_queries_like_a_reference(tmp_path, corpus_rows):
    """``exp/`` metrics: expanded queries, then hubness-corrected, over all candidates (numpy reference)."""
    from retrieval.config import EvalConfig
    from retrieval.evaluate import evaluate_model
    from retrieval.search.hubness import Hubness, item_penalties

    def manifest(rows, name):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return read_pairs(str(path))

    model = _RandomVectors()
    bank = build_query_bank(model, manifest(corpus_rows[16:], "bank.jsonl"))
    test = manifest(corpus_rows[:16], "test.jsonl")
    how = Expansion(k=4, weight=0.7, temperature=0.2)
    config = EvalConfig(
        ks=(1, 5), hubness="isoftmax", expansion=True, expansion_k=4, expansion_weight=0.7,
        expansion_temperature=0.2, progress=False, feature_cache=False,
    )  # fmt: skip
    metrics = evaluate_model(model, test, config=config, query_bank=bank).metrics
    images = model.encode_images(test.images()).numpy()
    texts = model.encode_texts(test.captions()).numpy()
    g = test.text_to_image()
    hub = Hubness("isoftmax")
    s_t2i = expand_queries(texts, bank, "text", how) @ images.T - item_penalties(bank.vectors["text"], images, hub)
    s_i2t = expand_queries(images, bank, "image", how) @ texts.T - item_penalties(bank.vectors["image"], texts, hub)
    caption_of = {int(img): i for i, img in enumerate(g)}
    for k in (1, 5):
        want_t2i = np.mean([(s_t2i[i] > s_t2i[i, g[i]]).sum() < k for i in range(len(texts))])
        want_i2t = np.mean([(s_i2t[j] > s_i2t[j, caption_of[j]]).sum() < k for j in range(len(images))])
        assert metrics[f"exp/t2i/R@{k}"] == pytest.approx(want_t2i)
        assert metrics[f"exp/i2t/R@{k}"] == pytest.approx(want_i2t)
    assert metrics["exp/t2i/R@5"] != metrics["hub/t2i/R@5"] or metrics["exp/i2t/R@5"] != metrics["hub/i2t/R@5"]
    with pytest.raises(ValueError, match="needs a query bank"):
        evaluate_model(model, test, config=EvalConfig(expansion=True, progress=False))
    with pytest.raises(ValueError, match="expansion_k"):
        EvalConfig(expansion_k=0)
