"""`retrieval eval --collection C --hybrid FIELDS`: dense, lexical and hybrid text->image side by side, tuning on
a validation share, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import Collection
from retrieval.config import EvalConfig
from retrieval.evaluate import evaluate_model, write_report
from retrieval.evaluate.hybrid_eval import compare_hybrid
from retrieval.search import Hybrid

from support.corpora import make_pairs
from support.keywords import KeywordEncoder


@pytest.fixture()
def setup(tmp_path: Path):
    """12 images: the model sees their colour only; their tags name the object (never the query's colour)."""
    pairs = make_pairs(tmp_path / "images")
    model = KeywordEncoder()
    paths, keys = pairs.images(), pairs.image_ids()
    vectors = model.encode_images(paths).numpy()
    metas = [
        {
            "modality": "image",
            "image_id": key,
            "tags": [key.split("-")[1], "vehicle" if "car" in key else "thing"],
        }
        for key in keys
    ]
    path = tmp_path / "coll"
    with Collection.create(path, dim=vectors.shape[1], index="Flat", fingerprint=model.fingerprint(),
                           text_fields=["tags"]) as coll:  # fmt: skip
        coll.add(vectors, metas)
    return pairs, model, path


def test_dense_lexical_and_hybrid_side_by_side(setup, tmp_path: Path) -> None:
    pairs, model, path = setup
    config = EvalConfig(progress=False, ks=(1, 3, 10), hybrid_fields=("tags",))
    with Collection.open(path, read_only=True) as coll:
        result = evaluate_model(model, pairs, collection=coll, config=config)
    m = result.metrics
    for prefix in ("dense", "lexical", "hybrid"):
        assert all(f"{prefix}/t2i/R@{k}" in m for k in (1, 3, 10))
    # the colour alone leaves 4 images per query tied for the dense arm; the object word alone 3:
    # together one image answers "a red car"
    assert m["hybrid/t2i/R@1"] > max(m["dense/t2i/R@1"], m["lexical/t2i/R@1"])
    assert m["dense/t2i/R@10"] == pytest.approx(
        m["t2i/R@10"]
    )  # the same dense ranking, through the collection
    out = write_report(result, tmp_path / "report", n_samples=2)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["hybrid/t2i/R@1"] == pytest.approx(m["hybrid/t2i/R@1"])
    assert saved["hybrid"]["settings"]["fusion"] == "rrf" and saved["hybrid"]["n_queries"] == len(pairs)
    assert "Dense, lexical and hybrid" in (out / "report.md").read_text()


def test_lexical_recall_by_hand(setup) -> None:
    """ "the car" names the object only: its 3 car images tie in BM25, the relevant one ranks 1 to 3;
    with ties counted against it (pessimistic), it is found at 3."""
    pairs, model, path = setup
    captions = ["the car"]
    key = "blue-car"
    keys = pairs.image_ids()
    with Collection.open(path, read_only=True) as coll:
        emb = model.encode_texts(captions).numpy()
        result = compare_hybrid(coll, emb, captions, keys, np.array([keys.index(key)]), ks=(1, 3),
                                hybrid=Hybrid(fusion="lexical"))  # fmt: skip
    assert result.metrics["lexical/t2i/R@1"] == 0.0 and result.metrics["lexical/t2i/R@3"] == 1.0


def test_tuning_chooses_on_validation_and_reports_on_the_rest(setup) -> None:
    pairs, model, path = setup
    config = EvalConfig(progress=False, ks=(1, 10), hybrid_fields=("all",), tune_hybrid=True, tune_share=0.5)
    with Collection.open(path, read_only=True) as coll:
        result = evaluate_model(model, pairs, collection=coll, config=config)
    tuned = result.hybrid.tuned
    assert tuned is not None and tuned["objective"] == "t2i/R@10"
    assert result.hybrid.n_queries + tuned["validation_queries"] == len(pairs)
    assert len(tuned["grid"]) == 10 + 11
    assert result.hybrid.hybrid.fusion in ("rrf", "weighted")
    assert "tuned on" in result.hybrid.notes[0]


def test_refusals(setup, tmp_path: Path) -> None:
    pairs, model, _ = setup
    with pytest.raises(ValueError, match="needs a collection"):
        evaluate_model(model, pairs, config=EvalConfig(progress=False, hybrid_fields=("tags",)))
    plain = tmp_path / "plain"
    with Collection.create(plain, dim=model.embed_dim, index="Flat", fingerprint=model.fingerprint()) as coll:
        coll.add(model.encode_images(pairs.images()).numpy(), [{"image_id": k} for k in pairs.image_ids()])
    with Collection.open(plain, read_only=True) as coll, pytest.raises(ValueError, match="no text index"):
        evaluate_model(
            model, pairs, collection=coll, config=EvalConfig(progress=False, hybrid_fields=("tags",))
        )
    with pytest.raises(ValueError, match="tune_share"):
        EvalConfig(tune_share=1.0)
