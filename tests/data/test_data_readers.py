from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.data import read_corpus, read_pairs

from support.images import jpeg_bytes, rgb_image


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_jsonl_relative_paths_lists_and_skips(image_dir: Path) -> None:
    manifest = write_jsonl(
        image_dir / "m.jsonl",
        [
            {"image": "a.jpg", "caption": ["a first", "a second"], "label": 3},
            {"image": "b.png", "caption": "b only"},
            {"image": "a.jpg", "caption": "a third"},
            {"image": "sub/c.jpg", "caption": "   "},
            {"image": "sub/c.jpg"},
            "{not json",
            {"image": "b.png", "caption": ["", "b again"]},
        ],
    )
    pairs = read_pairs(manifest)
    assert pairs.captions() == ["a first", "a second", "b only", "a third", "b again"]
    assert pairs.images() == [str(image_dir / "a.jpg"), str(image_dir / "b.png")]
    assert pairs.text_to_image().tolist() == [0, 0, 1, 0, 1]
    assert pairs.text_to_image().dtype == np.int64
    assert pairs[0].metadata == {"label": 3}
    reasons = [reason for _, reason in pairs.skipped]
    assert len(pairs.skipped) == 4
    assert reasons.count("empty caption") == 2
    assert any("invalid JSON" in r for r in reasons)
    assert any("no caption: no 'caption' field" in r for r in reasons)
    assert pairs.skipped[0][0].endswith("m.jsonl:4")


def test_id_column_groups_captions(tmp_path: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [{"file": "x.jpg", "text": "one", "uid": "7"}, {"file": "other/x.jpg", "text": "two", "uid": "7"}],
    )
    pairs = read_pairs(manifest, image_column="file", caption_column="text", id_column="uid")
    assert pairs.image_ids() == ["7"] and pairs.text_to_image().tolist() == [0, 0]


def test_split_filter_and_split_file(tmp_path: Path) -> None:
    rows = [
        {"image": "a.jpg", "caption": "a", "split": "train"},
        {"image": "b.jpg", "caption": "b", "split": "val"},
    ]
    write_jsonl(tmp_path / "all.jsonl", rows)
    assert read_pairs(tmp_path / "all.jsonl", split="val").captions() == ["b"]
    write_jsonl(tmp_path / "train.jsonl", [{"image": "z.jpg", "caption": "z"}])
    assert read_pairs(tmp_path, split="train").captions() == ["z"]


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(image_dir: Path, suffix: str, delimiter: str) -> None:
    path = image_dir / f"m{suffix}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["filepath", "title", "extra"])
        writer.writerow(["a.jpg", "an image, with a comma", "1"])
        writer.writerow(["b.png", '["list one", "list two"]', "2"])
        writer.writerow(["sub/c.jpg", "", "3"])
    pairs = read_pairs(path, image_column="filepath", caption_column="title")
    assert pairs.captions() == ["an image, with a comma", "list one", "list two"]
    assert pairs[0].image == str(image_dir / "a.jpg") and pairs[0].metadata == {"extra": "1"}
    assert pairs.skipped == [(f"{path}:4", "empty caption")]


def test_csv_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,title\nx.jpg,hello\n", encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=r"no column\(s\) \['image', 'caption'\].*columns are \['file', 'title'\].*--image-column",
    ):
        read_pairs(tmp_path / "m.csv")


def test_usual_column_names_stand_in_for_absent_defaults(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,text\nx.jpg,hello\n", encoding="utf-8")
    corpus = read_corpus(tmp_path / "m.csv")
    assert [(r.image, r.caption) for r in corpus] == [(str(tmp_path / "x.jpg"), "hello")]
    assert any("read from 'path'" in note and "--image-column" in note for note in corpus.notes)
    assert any("read from 'text'" in note for note in corpus.notes)
    # a column the user names is never replaced
    with pytest.raises(ValueError, match="no column"):
        read_pairs(tmp_path / "m.csv", image_column="file", caption_column="title")


def test_parquet_with_list_captions(image_dir: Path) -> None:
    table = pa.table(
        {"image": ["a.jpg", "b.png"], "caption": [["a one", "a two"], ["b one"]], "score": [0.5, 0.25]}
    )
    pq.write_table(table, image_dir / "m.parquet")
    pairs = read_pairs(image_dir / "m.parquet")
    assert pairs.captions() == ["a one", "a two", "b one"]
    assert pairs.text_to_image().tolist() == [0, 0, 1]
    assert pairs[2].metadata == {"score": 0.25}
    with pytest.raises(ValueError, match="no column"):
        read_pairs(image_dir / "m.parquet", caption_column="text")


def test_image_folder_with_sidecars(image_dir: Path) -> None:
    (image_dir / "a.txt").write_text("first caption\nsecond caption\n", encoding="utf-8")
    (image_dir / "a.json").write_text(json.dumps({"key": "000", "width": 24}), encoding="utf-8")
    (image_dir / "b.txt").write_text("  \n", encoding="utf-8")
    (image_dir / "sub" / "c.txt").write_text("c caption", encoding="utf-8")
    (image_dir / "orphan.txt").write_text("no image", encoding="utf-8")
    rgb_image().save(image_dir / "nocap.jpg")
    (image_dir / "._a.jpg").write_bytes(b"AppleDouble")  # hidden files are not images of the set
    (image_dir / ".thumbs").mkdir()
    rgb_image().save(image_dir / ".thumbs" / "a.jpg")
    pairs = read_pairs(image_dir, id_column="key")
    assert pairs.captions() == ["first caption", "second caption", "c caption"]
    assert pairs[0].image_id == "000" and pairs[0].metadata["width"] == 24
    assert pairs[2].image_id == str(image_dir / "sub" / "c.jpg")
    assert pairs[2].metadata["path"] == "sub/c.jpg"
    reasons = dict(pairs.skipped)
    assert reasons[str(image_dir / "b.png")] == "empty caption"
    assert "no caption" in reasons[str(image_dir / "nocap.jpg")]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000.tar", "w") as tar:
        _add(tar, "s/0001.jpg", jpeg_bytes(rgb_image()))
        _add(tar, "s/0001.txt", b"a shard caption")
        _add(tar, "s/0001.json", json.dumps({"url": "http://x"}).encode())
        _add(tar, "s/0002.jpg", jpeg_bytes(rgb_image(seed=5)))
        _add(tar, "s/0002.json", json.dumps({"caption": "caption from json"}).encode())
        _add(tar, "s/0003.txt", b"caption without image")
    with tarfile.open(shards / "001.tar", "w") as tar:
        _add(tar, "0004.png", b"")
        _add(tar, "0004.txt", b"")
    pairs = read_pairs(shards)
    assert pairs.captions() == ["a shard caption", "caption from json"]
    assert pairs[0].image == f"tar://{shards / '000.tar'}#s/0001.jpg"
    assert pairs[0].metadata == {"url": "http://x", "key": "s/0001"}
    assert [r for _, r in pairs.skipped] == ["no image member in this sample", "empty caption"]
    assert len(read_pairs(shards / "000.tar")) == 2
    assert len(read_pairs(str(shards / "*.tar"))) == 2


def test_truncated_shard_keeps_what_it_read(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for i in range(5):
            _add(tar, f"{i:04d}.jpg", jpeg_bytes(rgb_image(seed=i)))
            _add(tar, f"{i:04d}.txt", f"caption {i}".encode())
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:6000])  # inside the third image
    pairs = read_pairs(tmp_path / "cut.tar")
    assert 0 < len(pairs) < 5
    assert any("tar shard" in reason for _, reason in pairs.skipped)


def test_unknown_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pairs(tmp_path / "nothing.jsonl")
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read pairs"):
        read_pairs(tmp_path / "x.xml")
    with pytest.raises(FileNotFoundError, match="no files match"):
        read_pairs(str(tmp_path / "*.tar"))


def test_json_array_manifest_bom_and_wrong_columns(tmp_path: Path) -> None:
    rows = [{"image": "a.jpg", "caption": "one"}, 5, {"image": "b.jpg", "caption": "two"}]
    (tmp_path / "m.json").write_text(json.dumps({"pairs": rows}), encoding="utf-8")
    pairs = read_pairs(tmp_path / "m.json")
    assert pairs.captions() == ["one", "two"] and pairs.skipped[0][1] == "expected a JSON object, found int"
    (tmp_path / "bom.jsonl").write_text('\ufeff{"image": "a.jpg", "caption": "bom"}\n', encoding="utf-8")
    assert read_pairs(tmp_path / "bom.jsonl").captions() == ["bom"]
    write_jsonl(tmp_path / "wrong.jsonl", [{"file": "a.jpg", "title": "x"}, {"file": "b.jpg", "title": "y"}])
    with pytest.raises(
        ValueError, match=r"no row of .* has an 'image' or a 'caption' field.*\['file', 'title'\]"
    ):
        read_pairs(tmp_path / "wrong.jsonl")
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_pairs(tmp_path / "bad.json")


def test_csv_multiline_caption_reports_physical_lines(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text('image,caption\na.jpg,"two\nlines"\nb.jpg,\n', encoding="utf-8-sig")
    pairs = read_pairs(tmp_path / "m.csv")
    assert pairs.captions() == ["two\nlines"]
    assert pairs.skipped == [(f"{tmp_path / 'm.csv'}:4", "empty caption")]


def test_jsonl_bad_rows_are_skipped_by_reason_and_the_read_goes_on(tmp_path: Path) -> None:
    lines = [
        json.dumps({"image": "a.jpg", "caption": "first"}).encode(),
        b'{"image": "b.jpg", "caption": "caf\xe9 latin-1"}',  # invalid UTF-8
        b"42",
        b'["image", "caption"]',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion limit
        json.dumps({"image": "c.jpg", "caption": "last"}).encode(),
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pairs = read_pairs(tmp_path / "m.jsonl")
    assert pairs.captions() == ["first", "last"]
    where = [w for w, _ in pairs.skipped]
    assert where == [f"{tmp_path / 'm.jsonl'}:{n}" for n in (2, 3, 4, 5)]
    counts = pairs.skip_counts()
    assert counts["invalid UTF-8"] == 1
    assert counts["expected a JSON object, found int"] == 1
    assert counts["expected a JSON object, found list"] == 1
    assert sum(counts.values()) == len(pairs.skipped) == 4


def test_csv_bad_rows_are_skipped_by_reason_and_the_read_goes_on(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    huge = "x" * (limit + 10)
    (tmp_path / "m.csv").write_bytes(
        b"image,caption\n"
        b"a.jpg,first\n"
        + f"b.jpg,{huge}\n".encode()
        + b"c.jpg,caf\xe9\n"  # invalid UTF-8
        + b"d.jpg,last\n"
    )
    pairs = read_pairs(tmp_path / "m.csv")
    assert pairs.captions() == ["first", "last"]
    reasons = dict(pairs.skipped)
    assert len(pairs.skipped) == 2
    assert reasons[f"{tmp_path / 'm.csv'}:4"] == "invalid UTF-8"
    assert "field larger than" in reasons[f"{tmp_path / 'm.csv'}:3"]
    assert csv.field_size_limit() == limit  # the process-wide limit is left alone


def test_deeply_nested_json_in_captions_and_sidecars_does_not_abort_the_read(tmp_path: Path) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    (tmp_path / "m.csv").write_text(f"image,caption\na.jpg,{deep}\nb.jpg,fine\n", encoding="utf-8")
    pairs = read_pairs(tmp_path / "m.csv")
    assert pairs.captions() == [deep, "fine"]  # not a caption list: kept as the text it is
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (
            ("k1.jpg", jpeg_bytes(rgb_image())),
            ("k1.txt", b"one"),
            ("k1.json", deep.encode()),
            ("k2.jpg", jpeg_bytes(rgb_image())),
            ("k2.txt", b"two"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pairs = read_pairs(shard)
    assert pairs.captions() == ["one", "two"]
    assert pairs.skip_counts() == {"JSON metadata nested too deeply, ignored": 1}
