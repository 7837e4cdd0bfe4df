"""Every bad input gets a ValueError (or a file error) that names what was received and expected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import Collection, CollectionBusyError


@pytest.fixture
def coll(tmp_path: Path):
    c = Collection.create(tmp_path / "c", 4, index="Flat")
    c.add(np.eye(4, dtype=np.float32), [{"n": i, "s": "x"} for i in range(4)])
    yield c
    c.close()


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        (np.ones((2, 5), dtype=np.float32), r"dim 5.*has dim 4"),
        (np.ones(4, dtype=np.float32), r"2-D array \[n, d\].*received shape \[4\]"),
        (np.ones((1, 2, 4), dtype=np.float32), r"2-D array"),
        (np.array([[1, np.nan, 0, 0]], dtype=np.float32), r"NaN or infinite.*rows \[0\]"),
        (np.array([[0, 0, 0, 0], [1, np.inf, 0, 0]]), r"NaN or infinite.*rows \[1\]"),
        (np.array([["a", "b", "c", "d"]]), r"real-valued"),
        (np.ones((1, 4), dtype=bool), r"real-valued"),
    ],
)
def test_bad_vectors(coll: Collection, vectors, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        coll.add(vectors)
    assert len(coll) == 4


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ([{"a": 1}], r"1 entries but 2 vectors"),
        ({"a": 1}, r"list with one dict per vector"),
        ([{"a": 1}, 5], r"metadata\[1\] must be a dict"),
        ([{"a": object()}, {}], r"metadata\[0\] is not JSON-serialisable"),
        ([{"a": float("nan")}, {}], r"NaN"),
        ([{1: "x"}, {}], r"field name 1"),
        ([{'a"b': 1}, {}], r"double quotes"),
    ],
)
def test_bad_metadata(coll: Collection, metadata, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        coll.add(np.ones((2, 4), dtype=np.float32), metadata)
    assert len(coll) == 4, "nothing is added when the metadata is rejected"


def test_bad_search_arguments(coll: Collection) -> None:
    q = np.ones(4, dtype=np.float32)
    for k in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            coll.search(q, k)
    with pytest.raises(ValueError, match="dim 3"):
        coll.search(np.ones(3), 1)
    with pytest.raises(ValueError, match="NaN"):
        coll.search(np.full(4, np.nan), 1)
    with pytest.raises(ValueError, match="refine must be an integer >= 1"):
        coll.search(q, 1, refine=0)


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ({"missing": 1}, r"unknown filter field 'missing'.*\['n', 's'\]"),
        ({"n": {"between": [1, 2]}}, r"unknown operator 'between'"),
        ({"n": {"gte": None}}, r"range operator 'gte' needs a number or a string"),
        ({"n": {"in": 3}}, r"'in' needs a list"),
        ({"n": {}}, r"empty operator dict"),
        ("n=1", r"where must be a dict"),
        ({"n": [[1]]}, r"must be a str, number, bool or None"),
        ({"n": float("inf")}, r"not finite"),
    ],
)
def test_bad_filters(coll: Collection, where, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        coll.search(np.ones(4, dtype=np.float32), 2, where=where)


def test_unknown_ids(coll: Collection) -> None:
    with pytest.raises(ValueError, match=r"cannot remove: 1 unknown or removed id\(s\) \[99\]"):
        coll.remove([0, 99])
    assert len(coll) == 4, "nothing removed when one id is unknown"
    coll.remove([1])
    with pytest.raises(ValueError, match=r"unknown or removed id\(s\) \[1\]"):
        coll.remove([1])
    with pytest.raises(ValueError, match="cannot get metadata"):
        coll.get([1])
    with pytest.raises(ValueError, match="cannot get vectors"):
        coll.vectors([7])
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        coll.get([[0]])
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        coll.get([0.5])


def test_create_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        Collection.create(tmp_path / "a", 0)
    with pytest.raises(ValueError, match=r"metric 'cos'.*\['ip', 'l2'\]"):
        Collection.create(tmp_path / "a", 4, metric="cos")
    with pytest.raises(ValueError, match="FAISS cannot build index spec 'PQ3'"):
        Collection.create(tmp_path / "a", 4, index="PQ3")
    with pytest.raises(ValueError, match="not a FAISS factory string"):
        Collection.create(tmp_path / "a", 4, index="Flat; rm")
    with pytest.raises(ValueError, match="should not include IDMap"):
        Collection.create(tmp_path / "a", 4, index="IDMap,Flat")
    with pytest.raises(ValueError, match="recall_target"):
        Collection.create(tmp_path / "a", 4, recall_target=1.5)
    with pytest.raises(ValueError, match="memory_budget"):
        Collection.create(tmp_path / "a", 4, memory_budget="lots")
    with pytest.raises(ValueError, match="fingerprint must be a string"):
        Collection.create(tmp_path / "a", 4, fingerprint=3)
    assert not (tmp_path / "a").exists(), "nothing written for rejected arguments"


def test_create_refuses_existing(tmp_path: Path) -> None:
    Collection.create(tmp_path / "c", 4, index="Flat").close()
    with pytest.raises(FileExistsError, match="already exists"):
        Collection.create(tmp_path / "c", 4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a collection"):
        Collection.create(tmp_path / "other", 4, overwrite=True)
    assert (tmp_path / "other" / "precious.txt").exists()
    with Collection.create(tmp_path / "c", 8, index="Flat", overwrite=True) as coll:
        assert coll.dim == 8 and len(coll) == 0
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_dir()], "the old segments are gone"


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Collection.open(tmp_path / "nope", read_only=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Collection.open(tmp_path / "nope")
    assert list(tmp_path.iterdir()) == [], "no lock file left beside a missing collection"
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a collection"):
        Collection.open(tmp_path / "plain", read_only=True)
    Collection.create(tmp_path / "c", 4, index="Flat").close()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match=r"format version 99.*upgrade"):
        Collection.open(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(ValueError, match=r"manifest says 5 items but its segments hold 0"):
        Collection.open(tmp_path / "c", read_only=True)
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Collection.open(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an indexes collection manifest"):
        Collection.open(tmp_path / "c")


def test_read_only_and_closed_handles(coll: Collection, tmp_path: Path) -> None:
    coll.save()
    with pytest.raises(CollectionBusyError, match="already open for writing"):
        Collection.open(tmp_path / "c")
    with Collection.open(tmp_path / "c", read_only=True) as ro:
        assert len(ro) == 4
        for call in (lambda: ro.add(np.eye(4)), lambda: ro.remove([0]), ro.save, ro.rebuild):
            with pytest.raises(ValueError, match="opened read-only"):
                call()
    coll.close()
    with pytest.raises(ValueError, match="is closed"):
        coll.search(np.ones(4), 1)
    Collection.open(tmp_path / "c").close()  # the lock was released


def test_fingerprint_and_tune_errors(coll: Collection, tmp_path: Path) -> None:
    coll.check_fingerprint(None)
    with Collection.create(tmp_path / "fp", 4, index="Flat", fingerprint="model-a") as other:
        other.check_fingerprint("model-a")
        with pytest.raises(ValueError, match="made by the model with fingerprint model-a, but the model given has fingerprint model-b"):
            other.check_fingerprint("model-b")
    with pytest.raises(ValueError, match="cannot tune"):
        coll.tune()
    with pytest.raises(ValueError, match="recall_target must be in"):
        coll.tune(recall_target=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        Collection.create(tmp_path / "file", 4)
    with pytest.raises(ValueError, match="a file, not a collection"):
        Collection.open(tmp_path / "file")
