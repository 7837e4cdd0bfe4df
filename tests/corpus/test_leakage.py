"""`check_leakage` / `retrieval leakage` / `retrieval eval --leakage`: test images copied from training are
flagged, and recall is measured without them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.config import EmbedConfig
from retrieval.corpus import LeakageConfig, check_leakage
from retrieval.corpus.leakage import write_leakage
from retrieval.data import read_pairs
from retrieval.embed import embed_corpus

from support.images import write_image
from support.keywords import KeywordEncoder

QUIET = LeakageConfig(threshold=0.99, progress=False, batch_size=8, chunk_size=5)
OBJECTS = ("dog", "cat", "car")


def _split(folder: Path, colours: tuple[str, ...], seed: int) -> Path:
    """A manifest of one noisy image per colour and object, captioned "a <colour> <object>"."""
    folder.mkdir(parents=True)
    rows = []
    for i, colour in enumerate(colours):
        for j, obj in enumerate(OBJECTS):
            path = folder / f"{colour}_{obj}.png"
            write_image(path, colour, seed=seed + 10 * i + j)
            rows.append({"image": str(path), "caption": f"a {colour} {obj}"})
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture
def splits(tmp_path: Path) -> tuple[Path, Path]:
    """Train: red, green, blue; test: red (a leaked colour: KeywordEncoder maps every red image alike),
    purple, cyan, black."""
    train = _split(tmp_path / "train", ("red", "green", "blue"), seed=0)
    test = _split(tmp_path / "test", ("red", "purple", "cyan", "black"), seed=100)
    return train, test


def _reference_clean_t2i_r1(test: Path, leaked_images: set[str]) -> float:
    model = KeywordEncoder()
    pairs = read_pairs(test)
    images = pairs.images()
    image_vectors = model.encode_images(images).numpy()
    text_vectors = model.encode_texts(pairs.captions()).numpy()
    hits = []
    for t, i in enumerate(pairs.text_to_image()):
        if images[i] in leaked_images:
            continue
        scores = image_vectors @ text_vectors[t]
        hits.append(not (np.delete(scores, i) >= scores[i]).any())  # pessimistic ties
    return float(np.mean(hits))


def test_leaked_test_images_are_flagged_and_left_out_of_recall(splits, tmp_path: Path) -> None:
    train, test = splits
    leakage = check_leakage(KeywordEncoder(), train, test, QUIET)
    leaked = {leakage.examples[i].test for i in range(len(leakage.examples))}
    assert len(leakage.leaked) == 3 and leakage.test_images == 12 and leakage.train_images == 9
    assert {Path(p).name for p in leaked} == {"red_dog.png", "red_cat.png", "red_car.png"}
    assert all(Path(e.train).name.startswith("red_") and e.score >= 0.99 for e in leakage.examples)
    assert leakage.examples[0].caption.startswith("a red")
    assert leakage.metrics["clean/t2i/n_queries"] == 9 and leakage.metrics["t2i/n_queries"] == 12
    assert leakage.metrics["clean/t2i/R@1"] == pytest.approx(_reference_clean_t2i_r1(test, leaked))
    assert leakage.metrics["clean/i2t/n_queries"] == 9
    other = _split(tmp_path / "other", ("green", "blue", "yellow"), seed=50)  # no red: an honest split
    honest = check_leakage(KeywordEncoder(), other, test, QUIET)
    assert len(honest.leaked) == 0 and honest.metrics["clean/t2i/R@1"] == honest.metrics["t2i/R@1"]
    report = write_leakage(leakage, tmp_path / "report")
    assert {p.name for p in report.iterdir()} == {"leakage.json", "leakage.md", "nearest.png"}
    assert json.loads((report / "leakage.json").read_text())["leaked"] == 3


def test_a_training_collection_gives_the_same_answer(splits, tmp_path: Path) -> None:
    train, test = splits
    collection = tmp_path / "train.coll"
    embed_corpus(
        KeywordEncoder(), train, collection, EmbedConfig(num_workers=0, progress=False, index="Flat")
    )
    from_collection = check_leakage(KeywordEncoder(), collection, test, QUIET)
    from_corpus = check_leakage(KeywordEncoder(), train, test, QUIET)
    assert from_collection.leaked.tolist() == from_corpus.leaked.tolist()
    assert from_collection.train_images == 9  # its images, not its captions
    np.testing.assert_allclose(from_collection.nearest, from_corpus.nearest, atol=1e-5)
    with pytest.raises(ValueError, match=r"fingerprint|model"):
        check_leakage(KeywordEncoder(salt="other"), collection, test, QUIET)


def test_test_images_without_captions(splits, tmp_path: Path) -> None:
    train, _ = splits
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", "red", seed=5)
    write_image(photos / "b.png", "white", seed=6)
    leakage = check_leakage(KeywordEncoder(), train, photos, QUIET)
    assert leakage.test_images == 2 and [Path(e.test).name for e in leakage.examples] == ["a.png"]
    assert leakage.metrics == {}


def test_cli_leakage_and_eval_report_section(splits, tmp_path: Path, capsys) -> None:
    import torch

    from retrieval.model import build_model

    from support.tiny import CNN_GRU

    train, test = splits
    torch.manual_seed(0)
    model = tmp_path / "model"
    build_model(
        CNN_GRU, captions=[f"a {c} {o}" for c in ("red", "purple") for o in OBJECTS], device="cpu"
    ).save(model)
    quiet = ["--no-progress", "-q"]
    # the test set against itself: every image is its own copy
    assert (
        main(["leakage", str(test), str(test), "--model", str(model), "--out", str(tmp_path / "l"), *quiet])
        == 0
    )
    out = capsys.readouterr().out
    assert "12 of 12 test images (100.0 %)" in out and (tmp_path / "l" / "leakage.md").exists()
    argv = ["eval", str(test), "--model", str(model), "--leakage", str(train), "--leakage-threshold", "0.999999",
            "--out", str(tmp_path / "report"), *quiet]  # fmt: skip
    assert main(argv) == 0
    assert "leakage:" in capsys.readouterr().out
    assert "## Leakage from the training data" in (tmp_path / "report" / "report.md").read_text()
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())["leakage"]
    assert summary["test_images"] == 12 and summary["train_images"] == 9
    assert main(["leakage", str(train), str(test), "--model", str(model), "--threshold", "0"]) == 2
    assert "received '0'" in capsys.readouterr().err
    assert main(["eval", str(test), "--model", str(model), "--leakage-threshold", "0.9"]) == 1
    assert "--leakage-threshold needs --leakage" in capsys.readouterr().err
