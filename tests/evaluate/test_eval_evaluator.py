"""evaluate_model, zero-shot classification and the report directory, with a fake keyword encoder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from retrieval.config import EvalConfig
from retrieval.data import PairSet
from retrieval.evaluate import (
    DEFAULT_TEMPLATES,
    evaluate_model,
    retrieval_metrics,
    write_report,
    zero_shot_classify,
)

from support.corpora import LABELLED_OBJECTS, make_pairs
from support.keywords import FileNameEncoder


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("images"))


def test_metrics_equal_the_pure_function(pairs):
    model = FileNameEncoder()
    result = evaluate_model(model, pairs, ks=(1, 5), batch_size=4)
    text = model.encode_texts(pairs.captions())
    image = model.encode_images(pairs.images())
    assert result.metrics == pytest.approx(
        retrieval_metrics(text @ image.T, pairs.text_to_image(), ks=(1, 5)), abs=1e-12
    )
    assert result.metrics["t2i/n_queries"] == len(pairs)
    assert 0 < result.metrics["t2i/R@1"] < 1  # "the car" is ambiguous, "a red car" is not
    assert result.t2i.top_ids.shape == (len(pairs), 10)


def test_report_files_are_valid(pairs, tmp_path):
    config = EvalConfig(zero_shot_label_column="object", n_samples=4, top_n=3)
    result = evaluate_model(FileNameEncoder(), pairs, ks=(1, 5), config=config)
    out = write_report(result, tmp_path / "report", n_samples=config.n_samples, seed=config.seed)
    assert out == tmp_path / "report"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["t2i/R@1"] == pytest.approx(result.metrics["t2i/R@1"])
    assert summary["zero_shot"]["classes"] == sorted(LABELLED_OBJECTS)
    for name in (
        "recall_at_k.png",
        "rank_histogram.png",
        "samples_t2i.png",
        "samples_i2t.png",
        "zero_shot_confusion.png",
    ):
        with Image.open(out / name) as im:
            im.verify()
    with Image.open(out / "samples_t2i.png") as im:
        assert im.height >= 4 * 96  # one row per sample query
    with open(out / "queries_t2i.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(pairs)
    assert [int(r["rank"]) for r in rows] == result.t2i.first_rank.tolist()
    assert rows[0]["ground_truth_image"] == pairs.images()[0]
    with open(out / "queries_i2t.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(pairs.images())
    md = (out / "report.md").read_text()
    assert "| 5 |" in md and "Zero-shot" in md and "recall_at_k.png" in md
    assert not list(out.glob("*.tmp"))


def test_zero_shot_on_keyword_images(pairs):
    result = evaluate_model(FileNameEncoder(), pairs, config=EvalConfig(zero_shot_label_column="object"))
    zs = result.zero_shot
    assert zs.accuracy["top1"] == 1.0  # image names contain the object word
    assert result.metrics["zeroshot/top1"] == 1.0
    assert zs.confusion.sum() == len(pairs.images())
    assert np.trace(zs.confusion) == len(pairs.images())


def test_zero_shot_unknown_column_names_the_available_fields(pairs):
    with pytest.raises(ValueError, match=r"'colour'.*\['n', 'object'\]"):
        evaluate_model(FileNameEncoder(), pairs, config=EvalConfig(zero_shot_label_column="colour"))


def test_zero_shot_classify_ties_and_errors():
    r = zero_shot_classify(np.ones((2, 2)), np.eye(2), [0, 1], ["a", "b"], ks=(1, 2))
    assert r.accuracy == {"top1": 0.0, "top2": 1.0}  # ties count against
    assert r.per_class_accuracy == {"a": 0.0, "b": 0.0}
    with pytest.raises(ValueError, match="class indices"):
        zero_shot_classify(np.ones((2, 2)), np.eye(2), [0, 2], ["a", "b"])
    with pytest.raises(ValueError, match="same D"):
        zero_shot_classify(np.ones((2, 3)), np.eye(2), [0, 1], ["a", "b"])


def test_templates_must_have_a_slot(pairs):
    with pytest.raises(ValueError, match="must contain"):
        evaluate_model(
            FileNameEncoder(),
            pairs,
            config=EvalConfig(zero_shot_label_column="object", templates=("a photo",)),
        )
    assert EvalConfig().templates == DEFAULT_TEMPLATES


def test_broken_images_are_skipped_and_listed(tmp_path):
    pairs = make_pairs(tmp_path / "img", broken=True)
    result = evaluate_model(FileNameEncoder(), pairs, batch_size=5)
    write_report(result, tmp_path / "r")
    assert len(result.images) == len(pairs.images()) - 1
    assert len(result.captions) == len(pairs) - 1
    reasons = dict(result.skipped)
    assert any("broken" in where for where in reasons)
    summary = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert summary["n_skipped"] == len(result.skipped) == 2  # the image and its caption
    clean = evaluate_model(FileNameEncoder(), PairSet([p for p in pairs if p.image_id != "broken"]))
    assert result.metrics == clean.metrics


def test_empty_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(FileNameEncoder(), PairSet([]))


def test_config_round_trips():
    config = EvalConfig(zero_shot_label_column="label", refine=4, templates=("{}",))
    assert EvalConfig.from_json(config.to_json()) == config


FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


def test_query_csvs_escape_cells_a_spreadsheet_would_run(tmp_path):
    from retrieval.data import Pair

    base = make_pairs(tmp_path / "img")
    pairs = PairSet(
        [
            Pair(p.image, FORMULAS[i % len(FORMULAS)] + f" {i}", p.image_id, p.metadata)
            for i, p in enumerate(base)
        ]
    )
    # an image file whose name starts like a formula too
    evil = tmp_path / "img" / "=cmd.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(evil)
    pairs = PairSet([*pairs, Pair(str(evil), "@evil", "evil", {"object": "car"})])
    out = write_report(evaluate_model(FileNameEncoder(), pairs), tmp_path / "r")
    for name in ("queries_t2i.csv", "queries_i2t.csv"):
        with open(out / name, newline="") as fh:
            cells = [cell for row in csv.reader(fh) for cell in row]
        assert cells, name
        bad = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert not bad, (name, bad[:5])
    with open(out / "queries_t2i.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # escaped with a leading apostrophe, the text itself kept
    assert rows[0]["caption"] == "'" + FORMULAS[0] + " 0"
    assert all(r["rank"].isdigit() for r in rows)  # numbers stay numbers


@pytest.mark.parametrize("method", ["isoftmax", "csls"])
def test_hubness_metrics_equal_corrected_dense_scores(method):
    import torch

    from retrieval.evaluate.evaluator import _bank_metrics
    from retrieval.search import Hubness, QueryBank
    from retrieval.search.hubness import item_penalties

    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    image, text, g = unit(10), unit(25), rng.integers(0, 10, 25)  # random: no ties
    bank = QueryBank({"text": unit(7), "image": unit(6)})
    config = EvalConfig(hubness=method, hubness_k=2, hubness_beta=5.0)
    got = _bank_metrics(torch.from_numpy(text), torch.from_numpy(image), g, (1, 5), config, bank, expand=False)
    hub = Hubness(method, beta=5.0, k=2)
    p_img = item_penalties(bank.vectors["text"], image, hub)  # images are penalised for text queries
    p_txt = item_penalties(bank.vectors["image"], text, hub)  # texts for image queries
    t2i = retrieval_metrics(text @ image.T - p_img[None, :], g, ks=(1, 5))
    i2t = retrieval_metrics(text @ image.T - p_txt[:, None], g, ks=(1, 5))
    for key in ("t2i/R@1", "t2i/R@5", "t2i/MRR", "t2i/mean_rank"):
        assert got[f"hub/{key}"] == pytest.approx(t2i[key], abs=1e-9)
    for key in ("i2t/R@1", "i2t/R@5", "i2t/MRR", "i2t/mean_rank"):
        assert got[f"hub/{key}"] == pytest.approx(i2t[key], abs=1e-9)


def test_evaluate_model_adds_hubness_metrics_with_a_bank(pairs):
    from retrieval.search import QueryBank

    model = FileNameEncoder()
    text, image = model.encode_texts(pairs.captions()), model.encode_images(pairs.images())
    bank = QueryBank({"text": np.asarray(text[:5]), "image": np.asarray(image[:3])})
    config = EvalConfig(hubness="csls", hubness_k=2)
    result = evaluate_model(model, pairs, ks=(1, 5), config=config, query_bank=bank)
    plain = evaluate_model(model, pairs, ks=(1, 5))
    assert {k: v for k, v in result.metrics.items() if not k.startswith("hub/")} == plain.metrics
    assert 0 <= result.metrics["hub/t2i/R@1"] <= 1 and "hubness" in result.seconds
    with pytest.raises(ValueError, match="needs a query bank"):
        evaluate_model(model, pairs, config=config)
    with pytest.raises(ValueError, match="hubness"):
        EvalConfig(hubness="qb")


def _random_set(seed: int = 0):
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    image = unit(15)
    g = np.concatenate([np.arange(15), rng.integers(0, 15, 15)])
    text = image[g] + 0.9 * unit(len(g))
    return text / np.linalg.norm(text, axis=1, keepdims=True), image, g


def test_reranking_with_a_cosine_head_keeps_the_dense_metrics():
    import torch

    from retrieval.evaluate import retrieval_rankings_from_embeddings
    from retrieval.evaluate.rerank_eval import rerank_metrics
    from retrieval.match import MatchHead

    text, image, g = _random_set()
    t, i = torch.from_numpy(text), torch.from_numpy(image)
    t2i, i2t = retrieval_rankings_from_embeddings(t, i, g)
    dense = retrieval_metrics(text @ image.T, g, ks=(1, 5))
    metrics, bins = rerank_metrics(MatchHead(8), t, i, g, t2i, i2t, (1, 5), n=5)  # monotone in the cosine
    for key in ("t2i/R@1", "t2i/R@5", "i2t/R@1", "i2t/R@5"):
        assert metrics[f"rerank/{key}"] == pytest.approx(dense[key])
    assert sum(b["count"] for b in bins) == 5 * (len(text) + len(image))
    assert 0 <= metrics["match/ECE"] <= 1 and metrics["rerank/ms_per_query"] >= 0


def test_reranking_with_an_oracle_head_puts_every_found_match_first():
    import torch

    from retrieval.evaluate import retrieval_rankings_from_embeddings
    from retrieval.evaluate.rerank_eval import rerank_metrics

    text, image, g = _random_set(1)
    pair_of = {(tuple(image[g[k]].round(5)), tuple(text[k].round(5))) for k in range(len(g))}

    class Oracle:
        def probabilities(self, u, v):
            return np.array([float((tuple(a.round(5)), tuple(b.round(5))) in pair_of) for a, b in zip(u, v)])

    t, i = torch.from_numpy(text), torch.from_numpy(image)
    t2i, i2t = retrieval_rankings_from_embeddings(t, i, g)
    metrics, _ = rerank_metrics(Oracle(), t, i, g, t2i, i2t, (1, 5), n=5)
    dense = retrieval_metrics(text @ image.T, g, ks=(1, 5))
    assert metrics["rerank/t2i/R@1"] == pytest.approx(dense["t2i/R@5"])  # found in the top 5 -> first
    assert metrics["rerank/i2t/R@1"] == pytest.approx(dense["i2t/R@5"])
    assert metrics["rerank/t2i/R@5"] == pytest.approx(dense["t2i/R@5"])  # nothing enters or leaves the top 5
    assert metrics["match/ECE"] == pytest.approx(0.0)


def test_evaluate_model_reranks_with_a_match_head_and_reports_calibration(pairs, tmp_path):
    from retrieval.match import MatchHead

    model = FileNameEncoder()
    dim = model.encode_texts(["a"]).shape[1]
    config = EvalConfig(rerank=3)
    with pytest.raises(ValueError, match="needs a match head"):
        evaluate_model(model, pairs, ks=(1, 5), config=config)
    result = evaluate_model(model, pairs, ks=(1, 5), config=config, match_head=MatchHead(dim))
    assert {"rerank/t2i/R@1", "rerank/i2t/R@5", "match/ECE", "rerank/ms_per_query"} <= set(result.metrics)
    out = write_report(result, tmp_path / "report", n_samples=2)
    assert (out / "reliability.png").is_file()
    assert "re-ranking by the match head" in (out / "report.md").read_text()
    assert len(json.loads((out / "metrics.json").read_text())["calibration"]) == 10
