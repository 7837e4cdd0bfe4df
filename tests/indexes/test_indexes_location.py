"""Location strings: one parser for folders, Milvus servers and Milvus Lite files; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexes import parse_location
from indexes.location import DEFAULT_MILVUS_PORT, Location


def test_folders_stay_folders(tmp_path: Path) -> None:
    for given in ("photos.coll", "/data/photos", "relative/dir", tmp_path, "C:/odd:name"):
        loc = parse_location(given)
        assert loc.kind == "local" and loc.path == Path(given) and not loc.is_milvus
    assert parse_location("file:///data/photos").path == Path("/data/photos")


def test_server_locations() -> None:
    loc = parse_location("milvus://db.example.org/photos")
    assert (loc.kind, loc.host, loc.port, loc.name, loc.db, loc.tls) == (
        "milvus",
        "db.example.org",
        DEFAULT_MILVUS_PORT,
        "photos",
        None,
        False,
    )
    assert loc.uri == "http://db.example.org:19530" and str(loc) == "milvus://db.example.org:19530/photos"
    loc = parse_location(
        "milvus://10.0.0.5:19531/img_v2?db=prod&tls=true&server_name=m.example.org&timeout=5"
    )
    assert (loc.port, loc.db, loc.tls, loc.server_name, loc.timeout) == (
        19531,
        "prod",
        True,
        "m.example.org",
        5.0,
    )
    assert (
        loc.uri == "https://10.0.0.5:19531" and str(loc) == "milvus://10.0.0.5:19531/img_v2?db=prod&tls=true"
    )
    loc = parse_location("milvus://[::1]:19530/c?server_pem=/etc/ca.pem")
    assert (
        loc.host == "::1" and loc.tls and loc.server_pem == "/etc/ca.pem" and loc.uri == "https://[::1]:19530"
    )
    assert parse_location(loc) is loc


def test_lite_locations() -> None:
    loc = parse_location("milvus-lite:///data/vectors.db/photos")
    assert (loc.kind, loc.path, loc.name) == ("milvus-lite", Path("/data/vectors.db"), "photos")
    assert str(loc) == "milvus-lite:///data/vectors.db/photos" and loc.uri == "/data/vectors.db"
    rel = parse_location("milvus-lite://work/v.db/c1?timeout=3")
    assert rel.path == Path("work/v.db") and rel.timeout == 3.0


def test_credentials_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    monkeypatch.delenv("MILVUS_USER", raising=False)
    monkeypatch.delenv("MILVUS_PASSWORD", raising=False)
    loc = parse_location("milvus://alice:pa%40ss@h:1/c")
    assert loc.token == "alice:pa@ss"
    assert "pa" not in str(loc) + repr(loc) and "alice" not in str(loc) + repr(loc)
    assert parse_location("milvus://h/c?token=abc").token == "abc"
    assert parse_location("milvus://h/c").token is None
    monkeypatch.setenv("MILVUS_USER", "bob")
    monkeypatch.setenv("MILVUS_PASSWORD", "pw")
    assert parse_location("milvus://h/c").token == "bob:pw"
    monkeypatch.setenv("MILVUS_TOKEN", "key-123")
    assert parse_location("milvus://h/c").token == "key-123"
    assert parse_location("milvus://h/c?token=url").token == "url", "the location wins over the environment"
    with pytest.raises(ValueError) as err:
        parse_location("milvus://alice:topsecret@h/c?token=tok-secret&colour=red")
    assert "unknown option 'colour'" in str(err.value)
    assert "topsecret" not in str(err.value) and "tok-secret" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("milvis://h/c", "unknown scheme 'milvis'"),
        ("milvus://h", "exactly one collection name"),
        ("milvus://h/a/b", "exactly one collection name"),
        ("milvus:///c", "names no host"),
        ("milvus://h:port/c", "expected milvus://HOST:PORT/NAME"),
        ("milvus://h/1abc", "not valid in Milvus"),
        ("milvus://h/na-me", "not valid in Milvus"),
        ("milvus://h/c?timeout=-1", "positive number of seconds"),
        ("milvus://h/c?tls=maybe", "not a boolean"),
        ("milvus://h/c?ca_pem=a.pem", "mutual TLS needs all of"),
        ("milvus://h/c?db=a&db=b", "given twice"),
        ("milvus-lite:///data/vectors/photos", "must end in .db"),
        ("milvus-lite:///data/v.db/", "must end in .db"),
        ("milvus-lite:///data/v.db/c?token=x", "unknown option 'token'"),
        ("   ", "is empty"),
    ],
)
def test_bad_locations_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_location(text)


def test_location_type_errors() -> None:
    with pytest.raises(ValueError, match="must be a path or a string"):
        parse_location(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is a local folder"):
        _ = Location(kind="local", path=Path("x")).uri


def test_folder_only_tools_name_a_milvus_location() -> None:
    from indexes import Collection
    from indexes.verify import verify_path

    with pytest.raises(ValueError, match=r"Collection.open works on local folders.*milvus://db:19530/photos"):
        Collection.open("milvus://db:19530/photos")
    with pytest.raises(ValueError, match=r"milvus-lite://.*vectors.db/photos is a Milvus location"):
        verify_path("milvus-lite:///data/vectors.db/photos")
