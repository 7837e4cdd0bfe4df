"""Exact vs index evaluation through a real indexes.Collection."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.evaluate import compare_index, evaluate_model, retrieval_metrics_from_embeddings, write_report

from support.corpora import make_pairs
from support.keywords import FileNameEncoder

Collection = pytest.importorskip("indexes").Collection


def clustered(n_images: int, captions_per_image: int, dim: int, seed: int):
    """Unit image vectors and noisy unit caption vectors around them."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n_images, dim)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    g = np.repeat(np.arange(n_images), captions_per_image)
    text = image[g] + 0.9 * rng.normal(size=(len(g), dim)).astype(np.float32) / np.sqrt(dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return text, image, g


def build(path, text, image, g, index: str, with_texts: bool):
    keys = [f"img{i}" for i in range(len(image))]
    coll = Collection.create(path, dim=image.shape[1], index=index)
    meta = [{"modality": "image", "image_id": k} for k in keys]
    if with_texts:
        coll.add(image, meta)
        coll.add(text, [{"modality": "text", "image_id": keys[i]} for i in g])
    else:
        coll.add(image, [{"image_id": k} for k in keys])
    coll.save()
    return coll, keys


def test_flat_index_equals_exact(tmp_path):
    text, image, g = clustered(60, 2, 16, seed=0)
    coll, keys = build(tmp_path / "c", text, image, g, "Flat", with_texts=True)
    with coll:
        cmp = compare_index(coll, text, image, keys, g, ks=(1, 5, 10))
    want = retrieval_metrics_from_embeddings(text, image, g, ks=(1, 5, 10))
    assert cmp.exact == pytest.approx(want, abs=1e-9)
    assert set(cmp.index) == {k for k in want if "@" in k}
    for key, value in cmp.index.items():
        assert value == pytest.approx(want[key], abs=1e-9), key
    assert cmp.n_image_items == 60 and cmp.n_text_items == 120 and cmp.missing_images == 0
    assert "| t2i/R@10 |" in cmp.markdown()
    assert "answers searches filtered" in cmp.markdown()  # 60 images: exact fallback, noted


def test_ivfpq_costs_recall_and_refine_recovers_it(tmp_path):
    text, image, g = clustered(1200, 1, 32, seed=1)
    coll, keys = build(tmp_path / "c", text, image, g, "IVF16,PQ4x4", with_texts=False)
    with coll:
        runs = {r: compare_index(coll, text, image, keys, g, ks=(1, 10), refine=r) for r in (1, 4, 32)}
    assert runs[1].index_spec.startswith("IVF16")
    assert runs[1].n_text_items == 0 and not any(k.startswith("i2t") for k in runs[1].index)
    exact = runs[1].exact["t2i/R@10"]
    recall = [runs[r].index["t2i/R@10"] for r in (1, 4, 32)]
    assert recall[0] < recall[1] < recall[2] <= exact + 1e-12  # 4 bytes per vector lose neighbours
    assert runs[1].exact == runs[32].exact
    assert "(refine 4)" in runs[4].markdown()


def test_missing_images_and_distractors(tmp_path):
    text, image, g = clustered(40, 1, 8, seed=2)
    extra = np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    keys = [f"img{i}" for i in range(40)]
    with Collection.create(tmp_path / "c", dim=8, index="Flat") as coll:
        coll.add(image[:30], [{"image_id": k} for k in keys[:30]])  # 10 evaluated images missing
        coll.add(extra, [{"image_id": f"other{i}"} for i in range(10)])  # distractors
        cmp = compare_index(coll, text, image, keys, g, ks=(1, 5), add_missing=False)
        assert cmp.missing_images == 10 and cmp.added_images == 0
        assert cmp.exact["t2i/n_queries"] == 30
        assert cmp.index["t2i/R@5"] == pytest.approx(cmp.exact["t2i/R@5"])
        with pytest.raises(ValueError, match="none of the 3 evaluated images"):
            compare_index(coll, text[:3], image[:3], ["x", "y", "z"], [0, 1, 2], add_missing=False)
        with pytest.raises(ValueError, match="dim 4 but collection"):
            compare_index(coll, text[:, :4], image[:, :4], keys, g)


def test_evaluate_model_with_a_collection(tmp_path):
    pairs = make_pairs(tmp_path / "img")
    model = FileNameEncoder()
    images, captions = pairs.images(), pairs.captions()
    with Collection.create(
        tmp_path / "c", dim=model.embed_dim, index="Flat", fingerprint=model.fingerprint()
    ) as c:
        c.add(
            model.encode_images(images).numpy(),
            [{"modality": "image", "image_id": k} for k in pairs.image_ids()],
        )
        c.add(
            model.encode_texts(captions).numpy(),
            [{"modality": "text", "image_id": p.image_id} for p in pairs],
        )
        result = evaluate_model(model, pairs, ks=(1, 5), collection=c)
    write_report(result, tmp_path / "r")
    assert result.metrics["index/t2i/R@5"] == pytest.approx(result.metrics["t2i/R@5"])
    assert result.metrics["index/i2t/true_R@5"] == pytest.approx(result.metrics["i2t/true_R@5"])
    assert "Exact search vs the collection's index" in (tmp_path / "r" / "report.md").read_text()


def test_collection_of_another_model_is_refused(tmp_path):
    pairs = make_pairs(tmp_path / "img")
    with (
        Collection.create(tmp_path / "c", dim=8, index="Flat", fingerprint="0123abcd") as c,
        pytest.raises(ValueError, match="0123abcd"),
    ):
        evaluate_model(FileNameEncoder(), pairs, collection=c)


def test_post_filter_measures_the_index_of_a_mixed_collection(tmp_path):
    text, image, g = clustered(1000, 1, 32, seed=4)
    coll, keys = build(tmp_path / "c", text, image, g, "IVF16,PQ4x4", with_texts=True)
    with coll:
        where = compare_index(coll, text, image, keys, g, ks=(1, 10), refine=1)
        post = compare_index(coll, text, image, keys, g, ks=(1, 10), refine=1, filter_mode="post")
        with pytest.raises(ValueError, match="filter_mode"):
            compare_index(coll, text, image, keys, g, filter_mode="pre")
    assert where.exact == post.exact
    assert where.index["t2i/R@10"] == pytest.approx(where.exact["t2i/R@10"])  # small filtered set: exact
    assert where.notes and not post.notes
    assert post.index["t2i/R@10"] < post.exact["t2i/R@10"]
    assert post.index["i2t/R@10"] < post.exact["i2t/R@10"]
    assert "post-filtered" in post.markdown()
