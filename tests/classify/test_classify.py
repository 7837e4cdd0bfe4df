"""The fusion classifier: a tiny synthetic task, both fusions, every input kind, save/load, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import retrieval.classify as classify
from retrieval.classify import FusionClassifier, predict, train_classifier
from retrieval.config import ClassifyConfig


def _task(seed: int, n: int = 240, dim: int = 16, n_classes: int = 4):
    """Each class has an image centroid and a text centroid; vectors are noisy copies of them."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((2, n_classes, dim))

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    y = rng.integers(0, n_classes, n)
    u = unit(centres[0][y] + 0.6 * rng.standard_normal((n, dim)))
    v = unit(centres[1][y] + 0.6 * rng.standard_normal((n, dim)))
    return u, v, [f"class{c}" for c in y]


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_a_tiny_synthetic_task_is_learned_from_each_input(monkeypatch, fusion):
    train, test = _task(0), _task(1)
    monkeypatch.setattr(classify, "labelled_examples", lambda model, pairs, column: pairs)
    clf = train_classifier(None, train, ClassifyConfig(fusion=fusion, epochs=40, hidden=32))
    assert clf.classes == ["class0", "class1", "class2", "class3"]
    u, v, labels = test
    y = np.array([clf.classes.index(label) for label in labels])
    for image, text in ((u, None), (None, v), (u, v)):
        probs = predict(clf, image, text)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        assert (probs.argmax(1) == y).mean() >= 0.9


def test_attention_ignores_a_missing_modality():
    torch.manual_seed(0)
    clf = FusionClassifier(8, ["a", "b"], "attention", hidden=8).eval()
    u = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    image_only = torch.tensor([[True, False]] * 3)
    a = clf(u, torch.randn(3, 8), image_only)
    b = clf(u, torch.randn(3, 8), image_only)
    torch.testing.assert_close(a, b)  # whatever is in the absent text slot


def test_save_load_and_report(monkeypatch, tmp_path):
    train = _task(0, n=80)
    monkeypatch.setattr(classify, "labelled_examples", lambda model, pairs, column: pairs)
    clf = train_classifier(None, train, ClassifyConfig(fusion="concat", epochs=5, hidden=8))
    clf.save(tmp_path / "clf")
    again = FusionClassifier.load(tmp_path / "clf")
    np.testing.assert_allclose(predict(again, train[0][:4]), predict(clf, train[0][:4]), rtol=1e-6)
    monkeypatch.setattr(
        "retrieval.evaluate.class_embeddings",
        lambda model, classes, templates: torch.nn.functional.normalize(
            torch.randn(len(classes), 16), dim=-1
        ),
    )
    report = classify.evaluate_classifier(None, clf, _task(2, n=40), "label")
    out = classify.write_classification_report(report, tmp_path / "report")
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["accuracy"]) >= {"image", "text", "both", "zeroshot/image"}
    assert np.asarray(summary["confusion"]["both"]).sum() == 40
    for name in ("confusion_image.png", "confusion_text.png", "confusion_both.png", "report.md"):
        assert (out / name).is_file()
    with pytest.raises(ValueError, match="unknown fusion"):
        FusionClassifier(8, ["a"], "sum")
