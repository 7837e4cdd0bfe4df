"""The text index of a local collection: words as FTS5 reads them, BM25 over the whole collection,
kept in step with saves, merges, removals, readers, checks and repairs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from indexes import Collection, Limits
from indexes.lexical import TextIndex

from support.lexical_reference import bm25_reference, check_text_search

SMALL = Limits(
    buffer_bytes=4 * (4 * 4 + 8), segment_min_rows=2, merge_factor=2, tier_floor=2, lexicon_chunk_rows=3
)


def _vectors(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


ITEMS = [
    {"title": "Café crème au lait", "tags": ["drink", "hot"]},
    {"title": "Iced coffee", "tags": ["drink", "cold"], "sku": 4411},
    {"title": "Red bicycle leaning on a wall", "tags": ["bike", "red"]},
    {"title": "Naïve art poster — Ångström units", "tags": []},
    {"title": "Running shoes", "tags": ["sport"], "code": "XK-4411-B"},
    {"title": "The runner runs", "tags": ["sport", "run"]},
    {"title": "東京 tower at night", "tags": ["city"]},
    {"title": "λόγος", "tags": None},
    {"tags": ["untitled"]},
    {},
]


def _make(tmp_path: Path, name: str = "c", limits: Limits | None = None, **kwargs: object) -> Collection:
    return Collection.create(tmp_path / name, dim=4, index="Flat", limits=limits, **kwargs)


def test_diacritics_case_and_scripts(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title", "tags"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
        for query, expected in [
            ("cafe", 0),
            ("CAFÉ", 0),
            ("creme", 0),
            ("naive angstrom", 3),
            ("東京", 6),
            ("ΛΌΓΟΣ", 7),
            ("untitled", 8),
        ]:
            _, ids = coll.search_text(query, 3)
            assert ids[0, 0] == expected, (query, ids)
            assert (ids[0, 1:] == -1).all(), (query, ids)  # nothing else holds these words


def test_numbers_and_product_codes_are_words(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title", "sku", "code"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
        assert set(coll.search_text("4411", 5)[1][0, :2].tolist()) == {1, 4}  # an int field, a code's part
        assert coll.search_text("xk-4411-b", 5)[1][0, 0] == 4  # every part of the code: the best


def test_query_syntax_is_read_as_words(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
        for query in ['"unbalanced', "NOT AND OR", "title:cafe*", "-- ,, ", ""]:
            scores, _ = coll.search_text(query, 4)  # never a syntax error
            assert scores.shape == (1, 4)
        assert coll.search_text("", 2)[1].tolist() == [[-1, -1]]
        assert coll.search_text("title:cafe*", 2)[1][0, 0] == 0  # the words "title" and "cafe"


def test_porter_stemming_is_an_option(tmp_path: Path) -> None:
    with _make(tmp_path, "plain", text_fields=["title"]) as plain:
        plain.add(_vectors(len(ITEMS)), ITEMS)
        assert set(plain.search_text("run", 5)[1][0].tolist()) - {-1} == set()
    with _make(tmp_path, "stems", text_fields=["title"], stemming="porter") as stems:
        stems.add(_vectors(len(ITEMS)), ITEMS)
        assert set(stems.search_text("run", 5)[1][0].tolist()) - {-1} == {4, 5}
        assert stems.text_index == TextIndex(("title",), "porter")


def test_fields_are_searched_together_or_alone(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title", "tags"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
        metas = dict(enumerate(ITEMS))
        for fields in (None, ["tags"], ["title"]):
            scores, ids = coll.search_text(["red drink", "sport runs"], 5, fields=fields)
            chosen = fields or ["title", "tags"]
            check_text_search(
                [bm25_reference(metas, chosen, q) for q in ["red drink", "sport runs"]], 5, scores, ids
            )
        with pytest.raises(ValueError, match="not in the text index"):
            coll.search_text("red", 3, fields=["sku"])


def test_one_word_ranks_as_sqlite_fts5_bm25(tmp_path: Path) -> None:
    """For one word, FTS5's bm25() and ours differ by the idf form only: a constant factor."""
    rng = np.random.default_rng(3)
    vocab = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau"]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 12)))) for _ in range(200)]
    with _make(tmp_path, text_fields=["t"]) as coll:
        coll.add(_vectors(len(texts)), [{"t": t} for t in texts])
        con = sqlite3.connect(":memory:")
        con.execute("CREATE VIRTUAL TABLE f USING fts5(t, tokenize='unicode61 remove_diacritics 2')")
        con.executemany("INSERT INTO f(rowid, t) VALUES (?, ?)", enumerate(texts))
        for word in ("omega", "tau", "sigma"):
            theirs = dict(con.execute("SELECT rowid, -bm25(f) FROM f WHERE f MATCH ?", (word,)).fetchall())
            scores, ids = coll.search_text(word, len(texts))
            ours = {int(i): float(s) for i, s in zip(ids[0], scores[0]) if i >= 0}
            assert set(ours) == set(theirs)
            ratio = np.array([ours[i] / theirs[i] for i in ours])
            assert np.allclose(ratio, ratio[0], rtol=1e-5), word


def test_scores_do_not_depend_on_segments(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vocab = ["red", "green", "bike", "car", "café", "4411", "tower", "night"]
    metas = [{"t": " ".join(rng.choice(vocab, size=int(rng.integers(0, 8)))), "g": i % 3} for i in range(60)]
    x = _vectors(60)
    removed = [3, 7, 11, 40, 41, 59]
    queries = ["red bike", "cafe night", "4411", "car car tower"]
    with _make(tmp_path, "whole", text_fields=["t"]) as whole:
        whole.add(x, metas)
        whole.remove(removed)
        whole.save()
        want = whole.search_text(queries, 20, where={"g": [0, 1]})
    many = _make(tmp_path, "many", limits=SMALL, text_fields=["t"])
    for lo in range(0, 60, 7):
        many.add(x[lo : lo + 7], metas[lo : lo + 7])
        many.save()
    many.remove(removed[:3])  # some from saved segments ...
    got = many.search_text(queries, 20, where={"g": [0, 1]})  # ... some still live
    many.remove(removed[3:])
    assert len(many._segments) >= 3
    for step in ("unsaved", "saved", "compacted", "reopened"):
        if step == "saved":
            many.save()
        elif step == "compacted":
            many.compact(force=True)
        elif step == "reopened":
            many.close()
            many = Collection.open(tmp_path / "many", read_only=True)
        got = many.search_text(queries, 20, where={"g": [0, 1]})
        np.testing.assert_array_equal(got[1], want[1], err_msg=step)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6, err_msg=step)
    assert not np.isin(want[1], removed).any()
    many.close()


def test_unsaved_items_and_removals(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title"]) as coll:
        ids = coll.add(_vectors(3), [{"title": "zebra crossing"}, {"title": "zebra"}, {"title": "horse"}])
        assert set(coll.search_text("zebra", 5)[1][0].tolist()) - {-1} == {0, 1}
        coll.remove([ids[1]])
        assert coll.search_text("zebra", 5)[1][0].tolist() == [0, -1, -1, -1, -1]
        coll.add(_vectors(1), [{"title": "zebra zebra"}])  # rows added after a first search are caught up
        assert coll.search_text("zebra", 5)[1][0, :2].tolist() == [3, 0]


def test_where_filters_the_lexical_arm(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title", "tags"]) as coll:
        coll.add(_vectors(len(ITEMS)), [dict(m, n=i) for i, m in enumerate(ITEMS)])
        _, ids = coll.search_text("drink", 5, where={"n": {"gte": 1}})
        assert ids[0].tolist() == [1, -1, -1, -1, -1]
        with pytest.raises(ValueError, match="unknown filter field"):
            coll.search_text("drink", 5, where={"nope": 1})


def test_text_fields_declared_later_changed_and_dropped(tmp_path: Path) -> None:
    coll = _make(tmp_path, limits=SMALL)
    coll.add(_vectors(len(ITEMS)), ITEMS)
    coll.save()
    with pytest.raises(ValueError, match="no text index"):
        coll.search_text("cafe", 3)
    coll.set_text_fields(["title"])
    reader = Collection.open(tmp_path / "c", read_only=True)
    assert coll.search_text("drink", 3)[1][0, 0] == -1
    coll.set_text_fields(["title", "tags"], stemming="porter")
    assert coll.search_text("drinks", 3)[1][0, 0] in (0, 1)
    assert reader.text_fields == ["title"]  # the reader keeps the version it opened
    assert reader.search_text("cafe", 3)[1][0, 0] == 0
    coll.set_text_fields(None)
    assert coll.text_index is None and coll.info()["text_index"] is None
    assert not list((tmp_path / "c").glob("s*/lexical-*"))
    assert reader.search_text("cafe", 3)[1][0, 0] == 0  # its files were deleted, its handles still read
    reader.close()
    coll.close()
    assert Collection.open(tmp_path / "c").verify().ok


def test_info_reports_the_text_index(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
        coll.save()
        info = coll.info()["text_index"]
        assert info["fields"] == ["title"] and info["tokenizer"] == "unicode61 remove_diacritics 2"
        assert info["bytes_on_disk"] > 0


def _lexicon_file(path: Path) -> tuple[dict, Path]:
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["segments"][0]
    return manifest, path / entry["name"] / entry["lexical"]["file"]


def test_check_finds_a_damaged_lexicon_and_repair_rebuilds_it(tmp_path: Path) -> None:
    with _make(tmp_path, text_fields=["title"]) as coll:
        coll.add(_vectors(len(ITEMS)), ITEMS)
    _, file = _lexicon_file(tmp_path / "c")
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x5A
    file.write_bytes(bytes(data))
    from indexes.verify import verify_path

    report = verify_path(tmp_path / "c")
    assert not report.ok and "lexical-" in report.problems[0].file
    repaired = verify_path(tmp_path / "c", repair=True)
    assert repaired.repaired and any("lexicon rebuilt" in n for n in repaired.notes)
    assert verify_path(tmp_path / "c").ok
    with Collection.open(tmp_path / "c", read_only=True) as coll:
        assert coll.search_text("cafe", 2)[1][0, 0] == 0


def test_check_compares_a_lexicon_with_the_metadata(tmp_path: Path) -> None:
    """A lexicon whose checksum is right but whose words are not the segment's (here: another
    collection's lexicon with its checksum) is found by reading it against the metadata."""
    from indexes import files
    from indexes.verify import verify_path

    with _make(tmp_path, "a", text_fields=["title"]) as a:
        a.add(_vectors(len(ITEMS)), ITEMS)
    with _make(tmp_path, "b", text_fields=["title"]) as b:
        b.add(_vectors(len(ITEMS)), list(reversed(ITEMS)))
    manifest, file = _lexicon_file(tmp_path / "a")
    _, other = _lexicon_file(tmp_path / "b")
    file.write_bytes(other.read_bytes())
    manifest["segments"][0]["lexical"]["digest"] = files.digest_file(file)
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    report = verify_path(tmp_path / "a")
    assert not report.ok and "differ from the metadata" in report.problems[0].detail
    assert verify_path(tmp_path / "a", repair=True).repaired
    with Collection.open(tmp_path / "a", read_only=True) as coll:
        assert coll.search_text("cafe", 2)[1][0, 0] == 0


def test_bad_declarations_are_refused(tmp_path: Path) -> None:
    for bad, match in [
        ("", "empty"),
        ([""], "not a metadata field name"),
        (["a", "a"], "more than once"),
        ([3], "not a metadata field name"),
    ]:
        with pytest.raises(ValueError, match=match):
            _make(tmp_path, "bad", text_fields=bad)
    with pytest.raises(ValueError, match="stemming must be one of"):
        _make(tmp_path, "bad", text_fields=["t"], stemming="snowball")
    with pytest.raises(ValueError, match="needs text_fields"):
        _make(tmp_path, "bad", stemming="porter")
    with _make(tmp_path, "ok", text_fields="title, tags") as coll:
        assert coll.text_fields == ["title", "tags"]
        with pytest.raises(ValueError, match="must be a str"):
            coll.search_text([1], 3)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="k must be"):
            coll.search_text("x", 0)
