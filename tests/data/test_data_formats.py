"""The dataset formats of the field, read through the one entry point, on small files written here."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from retrieval.data import (
    EmptyCorpusError,
    UnpairedCorpusError,
    expand_braces,
    load_image,
    read_corpus,
    read_pairs,
    refs,
)
from retrieval.data.images import read_ref_bytes

from support.images import jpeg_bytes, png_bytes, rgb_image


def _images(n: int) -> list[bytes]:
    return [jpeg_bytes(rgb_image(width=20 + i, height=12, seed=i)) for i in range(n)]


# -- Parquet / Arrow with image bytes ------------------------------------------------------------
def _hf_table(blobs: list[bytes]) -> pa.Table:
    """A table shaped as `datasets` exports an Image feature: {bytes, path} structs."""
    image = pa.array(
        [{"bytes": b, "path": f"{i:03d}.jpg"} for i, b in enumerate(blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    captions = [[f"picture {i}", f"photo {i}"] for i in range(len(blobs))]
    split = ["test" if i % 2 else "train" for i in range(len(blobs))]
    return pa.table({"image": image, "caption": captions, "split": split, "n": list(range(len(blobs)))})


def test_parquet_with_bytes_structs_reads_decodes_and_keeps_refs_stable(tmp_path: Path) -> None:
    blobs = _images(5)
    pq.write_table(_hf_table(blobs), tmp_path / "train-00000-of-00001.parquet", row_group_size=2)
    corpus = read_corpus(tmp_path / "train-00000-of-00001.parquet")
    assert corpus.reader == "Parquet table" and corpus.counts() == {"pair": 10, "image": 0, "text": 0}
    pairs = corpus.pairs()
    assert pairs.captions()[:3] == ["picture 0", "photo 0", "picture 1"]
    assert pairs.text_to_image().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert pairs[0].metadata == {"split": "train", "n": 0}  # the bytes are never copied into metadata
    for i, ref in enumerate(pairs.images()):
        assert ref.startswith("parquet://") and ref.endswith(f"#image/{i}")
        assert read_ref_bytes(ref) == blobs[i]  # across row groups of two rows
        assert load_image(ref).size == (20 + i, 12)
    assert read_pairs(tmp_path / "train-00000-of-00001.parquet").images() == pairs.images()  # stable
    assert read_pairs(tmp_path / "train-00000-of-00001.parquet", split="test").captions() == [
        "picture 1", "photo 1", "picture 3", "photo 3",
    ]  # fmt: skip


def test_parquet_plain_binary_column_found_by_its_content(tmp_path: Path) -> None:
    blobs = _images(3)
    pq.write_table(
        pa.table({"jpg": pa.array(blobs, pa.binary()), "text": ["a", "b", "c"]}), tmp_path / "data.bin"
    )
    corpus = read_corpus(tmp_path / "data.bin")  # the name says nothing: the content does
    assert corpus.counts()["pair"] == 3
    assert [read_ref_bytes(ref) for ref in corpus.pairs().images()] == blobs
    assert any("read from 'jpg'" in note for note in corpus.notes)
    assert any("read from 'text'" in note for note in corpus.notes)
    # two byte columns: which one holds the images must be said
    table = pa.table({"jpg": pa.array(blobs, pa.binary()), "thumb": blobs, "text": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "two.parquet")
    with pytest.raises(UnpairedCorpusError, match=r"has no column 'image'.*--image-column"):
        read_pairs(tmp_path / "two.parquet")
    pairs = read_pairs(tmp_path / "two.parquet", image_column="jpg")
    assert [read_ref_bytes(ref) for ref in pairs.images()] == blobs
    assert "thumb" not in pairs[0].metadata  # bytes are never copied into metadata


def test_row_refs_fuzzed_against_the_bytes_across_cache_and_cursor_paths(tmp_path, monkeypatch) -> None:
    blobs = [bytes([i % 251]) * (50 + 13 * i) for i in range(40)]
    table = pa.table({"image": pa.array(blobs, pa.binary()), "caption": [str(i) for i in range(40)]})
    pq.write_table(table, tmp_path / "one_group.parquet")  # a single row group
    pq.write_table(table, tmp_path / "groups.parquet", row_group_size=7)
    rng = random.Random(0)
    for cache_bytes in (refs.CACHE_BYTES, 64):  # 64 bytes: every group is "too large", read by batches
        monkeypatch.setattr(refs, "CACHE_BYTES", cache_bytes)
        monkeypatch.setattr(refs, "BATCH_ROWS", 3)
        refs._parquet_layout.cache_clear()
        refs._CURSORS.clear()
        for name in ("one_group.parquet", "groups.parquet"):
            order = list(range(40)) + [rng.randrange(40) for _ in range(40)]
            for row in order:
                assert (
                    refs.read_row_bytes(refs.row_ref("parquet", tmp_path / name, "image", row)) == blobs[row]
                )
    assert any("row groups of up to" in note for note in read_corpus(tmp_path / "one_group.parquet").notes)
    with pytest.raises(OSError, match="past the file's 40 rows"):
        refs.read_row_bytes(refs.row_ref("parquet", tmp_path / "groups.parquet", "image", 40))
    with pytest.raises(OSError, match="no column"):
        refs.read_row_bytes(refs.row_ref("parquet", tmp_path / "groups.parquet", "jpg", 0))
    with pytest.raises(OSError, match="malformed"):
        refs.read_row_bytes("parquet://nowhere")


def test_row_refs_survive_odd_column_names_and_hashes_in_paths(tmp_path: Path) -> None:
    folder = tmp_path / "a#b"
    folder.mkdir()
    blobs = _images(2)
    pq.write_table(pa.table({"im/g#1": pa.array(blobs, pa.binary())}), folder / "t.parquet")
    ref = refs.row_ref("parquet", folder / "t.parquet", "im/g#1", 1)
    assert refs.split_row_ref(ref) == ("parquet", str(folder / "t.parquet"), "im/g#1", 1)
    assert read_ref_bytes(ref) == blobs[1]


@pytest.mark.parametrize("how", ["feather", "ipc_file", "ipc_stream"])
def test_arrow_files(tmp_path: Path, how: str) -> None:
    blobs = _images(3)
    table = _hf_table(blobs)
    path = tmp_path / "data.arrow"
    if how == "feather":
        feather.write_feather(table, path)
    else:
        open_writer = pa.ipc.new_file if how == "ipc_file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, open_writer(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    corpus = read_corpus(path)
    assert corpus.reader == "Arrow table"
    images = corpus.pairs().images()
    assert [read_ref_bytes(ref) for ref in images] == blobs
    assert all(ref.startswith("arrow://") for ref in images)


def test_struct_without_bytes_reads_its_path(tmp_path: Path) -> None:
    rgb_image().save(tmp_path / "on_disk.png")
    image = pa.array(
        [{"bytes": None, "path": "on_disk.png"}, None],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image, "caption": ["x", "y"]}), tmp_path / "m.parquet")
    corpus = read_corpus(tmp_path / "m.parquet")
    assert [r.kind for r in corpus] == ["pair", "text"]
    assert corpus.records[0].image == str(tmp_path / "on_disk.png")
    assert any("empty or not a string" in s.reason for s in corpus.skipped)


# -- datasets.save_to_disk ----------------------------------------------------------------------
def _save_to_disk_by_hand(folder: Path, table: pa.Table, split: str) -> None:
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow stream files, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    path = str(folder / "data-00000-of-00001.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    features = {"image": {"_type": "Image"}, "caption": {"feature": {"dtype": "string", "_type": "Value"}}}
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}), encoding="utf-8")
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")


def test_save_to_disk_folders_read_with_pyarrow_alone(tmp_path: Path) -> None:
    blobs = _images(4)
    root = tmp_path / "dd"
    _save_to_disk_by_hand(root / "train", _hf_table(blobs[:3]), "train")
    _save_to_disk_by_hand(root / "test", _hf_table(blobs[3:]), "test")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}), encoding="utf-8")
    corpus = read_corpus(root, split="test")
    assert corpus.reader == "datasets save_to_disk folder (split test)"
    assert [read_ref_bytes(r) for r in corpus.pairs().images()] == blobs[3:]
    assert len(read_pairs(root / "train")) == 6
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]: name one with --split"):
        read_corpus(root)
    with pytest.raises(ValueError, match="no split 'val'"):
        read_corpus(root, split="val")


def test_save_to_disk_of_the_datasets_library(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (optional)")
    if not hasattr(datasets, "Dataset"):  # tests/datasets shadows a missing library
        pytest.skip("the datasets library is not installed (optional)")
    blobs = _images(3)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "caption": ["a", "b", "c"]}, features=features
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    pairs = read_pairs(tmp_path / "saved")
    assert pairs.captions() == ["a", "b", "c"]
    assert [read_ref_bytes(r) for r in pairs.images()] == blobs


# -- Karpathy split and COCO captions JSON --------------------------------------------------------
def _karpathy(images: Path, coco: bool) -> dict:
    entries = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        name = f"COCO_val2014_{i:012d}.jpg" if coco else f"{1000 + i}.jpg"
        folder = images / "val2014" if coco else images
        folder.mkdir(parents=True, exist_ok=True)
        rgb_image(seed=i).save(folder / name)
        entry = {
            "filename": name,
            "split": split,
            "sentences": [
                {"raw": f"first of {i}", "tokens": ["first"]},
                {"tokens": ["tokens", "of", str(i)]},
            ],
            "sentids": [2 * i, 2 * i + 1],
            ("cocoid" if coco else "imgid"): 100 + i,
        }
        if coco:
            entry["filepath"] = "val2014"
        entries.append(entry)
    return {"images": entries, "dataset": "coco" if coco else "flickr30k"}


@pytest.mark.parametrize("coco", [True, False])
def test_karpathy_json_with_images_in_another_folder(tmp_path: Path, coco: bool) -> None:
    images = tmp_path / "elsewhere" / "images"
    (tmp_path / "splits").mkdir()
    path = tmp_path / "splits" / "dataset.json"
    path.write_text(json.dumps(_karpathy(images, coco)), encoding="utf-8")  # one line, as published
    pairs = read_pairs(path, image_root=images, split="test")
    expected = images / ("val2014/COCO_val2014_000000000003.jpg" if coco else "1003.jpg")
    assert pairs.images() == [str(expected)] and pairs.captions() == ["first of 3", "tokens of 3"]
    assert pairs[0].metadata["split"] == "test" and "sentences" not in pairs[0].metadata
    assert len(read_pairs(path, image_root=images, split="train,restval").images()) == 2
    corpus = read_corpus(path, image_root=images, id_column="cocoid" if coco else "imgid")
    assert corpus.reader == "Karpathy split JSON"
    assert corpus.pairs().image_ids() == ["100", "101", "102", "103"]
    with pytest.raises(FileNotFoundError, match=r"--image-root \(image_root=\)"):
        read_corpus(path)  # the images are not beside the JSON


def test_coco_captions_json(tmp_path: Path) -> None:
    images = tmp_path / "val2017"
    images.mkdir()
    for i in (1, 2, 3):
        rgb_image(seed=i).save(images / f"{i:012d}.jpg")
    doc = {
        "info": {},
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 24, "height": 16} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 2, "caption": "two, first"},
            {"id": 11, "image_id": 1, "caption": "one"},
            {"id": 12, "image_id": 2, "caption": "two, second"},
            {"id": 13, "image_id": 9, "caption": "of no image"},
        ],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    corpus = read_corpus(path, image_root=images)
    assert corpus.reader == "COCO captions JSON"
    assert corpus.counts() == {"pair": 3, "image": 1, "text": 0}  # image 3 has no caption: an image alone
    pairs = corpus.pairs()
    assert pairs.captions() == ["one", "two, first", "two, second"]
    assert pairs[0].metadata["coco_id"] == 1 and pairs[0].image == str(images / "000000000001.jpg")
    assert any("unknown images: 1" in s.reason for s in corpus.skipped)
    assert read_pairs(path, image_root=images, id_column="id").image_ids() == ["1", "2"]
    with pytest.raises(ValueError, match="drop --split"):
        read_corpus(path, image_root=images, split="val")
    with pytest.raises(FileNotFoundError, match="--image-root"):
        read_corpus(path)


# -- webdataset: clip_benchmark roots, brace patterns ---------------------------------------------
def _shard(path: Path, samples: list[tuple[str, bytes, str | None, int | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, text, label in samples:
            members = [(f"{key}.webp", image)]
            if text is not None:
                members.append((f"{key}.txt", text.encode()))
            if label is not None:
                members.append((f"{key}.cls", str(label).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _webp(seed: int) -> bytes:
    buffer = io.BytesIO()
    rgb_image(seed=seed).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_clip_benchmark_root_with_split(tmp_path: Path) -> None:
    root = tmp_path / "wds_flickr"
    for split, n_shards in (("test", 12), ("train", 1)):
        for s in range(n_shards):
            _shard(root / split / f"{s}.tar", [(f"s{s:07d}", _webp(s), f"caption {s}\nother {s}", None)])
        (root / split / "nshards.txt").write_text(f"{n_shards}\n", encoding="utf-8")
    (root / "dataset_type.txt").write_text("retrieval\n", encoding="utf-8")
    corpus = read_corpus(root, split="test")
    assert corpus.reader == "webdataset root (split test)"
    pairs = corpus.pairs()
    assert pairs.captions()[:4] == ["caption 0", "other 0", "caption 1", "other 1"]
    assert pairs.captions()[-2:] == ["caption 11", "other 11"]  # 0..11 in order, not 0, 1, 10, 11, 2
    assert load_image(pairs.images()[0]).size == (24, 16)
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]: name one with --split"):
        read_corpus(root)
    with pytest.raises(ValueError, match=r"no split 'val'; its splits are \['test', 'train'\]"):
        read_corpus(root, split="val")
    (root / "test" / "nshards.txt").write_text("13\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="says 13 shards but 1 are missing"):
        read_corpus(root, split="test")


def test_clip_benchmark_classification_shards_name_their_class(tmp_path: Path) -> None:
    root = tmp_path / "wds_cifar"
    _shard(root / "test" / "0.tar", [("s0", _webp(0), None, 1), ("s1", _webp(1), None, 0)])
    (root / "classnames.txt").write_text("cat\ndog\n", encoding="utf-8")
    corpus = read_corpus(root)  # one split: taken
    assert [r.kind for r in corpus] == ["image", "image"]
    assert [r.metadata["label"] for r in corpus] == ["dog", "cat"]


def test_brace_patterns(tmp_path: Path) -> None:
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{a,{b,c}d}y") == ["xay", "xbdy", "xcdy"]
    assert expand_braces("{0..10..5}{x}") == ["0{x}", "5{x}", "10{x}"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    for i in range(4):
        _shard(tmp_path / "shards" / f"{i:03d}.tar", [(f"k{i}", _webp(i), f"c{i}", None)])
    _shard(tmp_path / "other" / "x.tar", [("kx", _webp(9), "cx", None)])
    assert read_pairs(str(tmp_path / "shards" / "{000..002}.tar")).captions() == ["c0", "c1", "c2"]
    both = read_pairs(str(tmp_path / "{shards/003,other/x}.tar"))
    assert both.captions() == ["c3", "cx"]
    with pytest.raises(FileNotFoundError, match=r"1 of the 5 names do not exist.*004\.tar"):
        read_corpus(str(tmp_path / "shards" / "{000..004}.tar"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        read_corpus(str(tmp_path / "none" / "{0..1}.tar"))


# -- unpaired corpora ---------------------------------------------------------------------------
def test_unpaired_sources_are_images_or_captions_alone(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb_image(seed=0).save(photos / "a.jpg")
    rgb_image(seed=1).save(photos / "b.png")
    folder = read_corpus(photos)
    assert folder.reader == "image folder" and folder.counts() == {"pair": 0, "image": 2, "text": 0}
    assert folder.records[0].image_id == str(photos / "a.jpg") and folder.records[0].caption is None
    with pytest.raises(UnpairedCorpusError, match=r"2 images without a caption.*--caption-column"):
        read_pairs(photos)
    (tmp_path / "m.jsonl").write_text(
        '{"image": "photos/a.jpg"}\n{"image": "photos/b.png"}\n', encoding="utf-8"
    )
    assert read_corpus(tmp_path / "m.jsonl").counts()["image"] == 2
    pq.write_table(pa.table({"image": _images(2)}), tmp_path / "only_images.parquet")
    assert read_corpus(tmp_path / "only_images.parquet").counts()["image"] == 2
    captions = tmp_path / "queries.txt"
    captions.write_bytes(b"a red car\n\n  a blue boat \n\xff\xfe bad\na red car\n")
    listed = read_corpus(captions)
    assert listed.reader == "caption list"
    assert [r.caption for r in listed] == ["a red car", "a blue boat", "a red car"]
    assert [s.reason for s in listed.skipped] == ["invalid UTF-8"]
    pq.write_table(pa.table({"caption": ["x", "y"]}), tmp_path / "only_captions.parquet")
    assert read_corpus(tmp_path / "only_captions.parquet").counts()["text"] == 2
    with pytest.raises(UnpairedCorpusError, match="2 captions without an image"):
        read_pairs(tmp_path / "only_captions.parquet")


def test_nothing_read_names_the_reader_and_the_first_reasons(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCorpusError, match=r"read as image folder\): .*empty holds no image \(\.jpg"):
        read_corpus(tmp_path / "empty")
    lines = ["{bad", "[1]", json.dumps({"image": "", "caption": ""}), json.dumps({"image": "http://x/a.jpg"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError) as info:
        read_corpus(tmp_path / "m.jsonl")
    message = str(info.value)
    assert "read as JSON Lines manifest" in message and "all 5 entries were skipped" in message
    assert "m.jsonl:1: invalid JSON" in message and "m.jsonl:2: expected a JSON object" in message
    assert "m.jsonl:4" not in message  # the first three reasons only


def test_content_decides_the_reader_not_the_name(tmp_path: Path) -> None:
    rgb_image().save(tmp_path / "a.jpg")
    (tmp_path / "rows.json").write_text(
        '{"image": "a.jpg", "caption": "x"}\n{"image": "a.jpg", "caption": "y"}\n'
    )
    assert read_corpus(tmp_path / "rows.json").reader == "JSON Lines manifest"
    with tarfile.open(tmp_path / "shard.data", "w") as tar:
        for name, data in (("k.png", png_bytes("red")), ("k.txt", b"red square")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert read_corpus(tmp_path / "shard.data").reader == "webdataset shard"


def test_hugging_face_image_folder_with_metadata(tmp_path: Path) -> None:
    for name in ("x.png", "y.png"):
        rgb_image().save(tmp_path / name)
    rows = [{"file_name": "x.png", "text": "an x"}, {"file_name": "y.png", "text": "a y"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = read_corpus(tmp_path)
    assert corpus.reader == "image folder with metadata.jsonl"
    assert [(Path(r.image).name, r.caption) for r in corpus] == [("x.png", "an x"), ("y.png", "a y")]


def test_image_root_applies_to_relative_manifest_paths(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    rgb_image().save(tmp_path / "pics" / "z.jpg")
    (tmp_path / "m.csv").write_text("image,caption\nz.jpg,zed\n", encoding="utf-8")
    pairs = read_pairs(tmp_path / "m.csv", image_root=tmp_path / "pics")
    assert pairs.images() == [str(tmp_path / "pics" / "z.jpg")]
    assert np.asarray(load_image(pairs.images()[0])).shape == (16, 24, 3)
