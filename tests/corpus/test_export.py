"""`export_subset` / `retrieval export`: the matching items' media, captions and metadata copied into a
dataset that the toolkit's one reader (train, embed, eval) reads back."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexes import Collection
from retrieval.config import EmbedConfig
from retrieval.corpus import EmptyCollectionError, ExportConfig, export_subset
from retrieval.data import read_corpus
from retrieval.data.images import read_ref_bytes
from retrieval.embed import embed_corpus

from support.corpora import write_corpus
from support.keywords import COLORS, KeywordEncoder

EMBED = EmbedConfig(batch_size=8, num_workers=0, progress=False, index="Flat")
FORMATS = ("folder", "parquet", "webdataset")


def _source(tmp_path: Path, kind: str) -> tuple[Path, dict[str, bytes], dict[str, set[str]]]:
    """A corpus of 16 noisy colour images (8 colours x 2 objects); images 0-3 have a second caption.
    Returns the source, each image's bytes by (colour, number) key and its captions."""
    rows = write_corpus(tmp_path / "images", 16)
    media: dict[str, bytes] = {}
    captions: dict[str, set[str]] = {}
    out_rows = []
    for i, row in enumerate(rows):
        data = Path(row["image"]).read_bytes()
        key = row["image_id"]
        media[key] = data
        texts = [row["caption"]] + ([f"another {row['caption'].split()[1]} picture"] if i < 4 else [])
        captions[key] = set(texts)
        out_rows.append({**row, "caption": texts, "data": data})
    if kind == "files":
        source = tmp_path / "pairs.jsonl"
        source.write_text(
            "".join(json.dumps({k: v for k, v in r.items() if k != "data"}) + "\n" for r in out_rows)
        )
    elif kind == "parquet":
        source = tmp_path / "pairs.parquet"
        table = pa.table(
            {
                "image": [{"bytes": r["data"], "path": f"{r['image_id']}.png"} for r in out_rows],
                "caption": [r["caption"] for r in out_rows],
                "image_id": [r["image_id"] for r in out_rows],
            }
        )
        pq.write_table(table, source)
    else:
        source = tmp_path / "shard.tar"
        with tarfile.open(source, "w") as tar:
            for r in out_rows:
                for name, data in (
                    (f"{r['image_id']}.png", r["data"]),
                    (f"{r['image_id']}.txt", "\n".join(r["caption"]).encode()),
                    (f"{r['image_id']}.json", json.dumps({"image_id": r["image_id"]}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return source, media, captions


def _red_keys(media: dict[str, bytes]) -> set[str]:
    names = list(COLORS)  # the palette write_corpus cycles through
    return {key for key in media if names[int(key.split("_")[1]) % len(names)] == "red"}


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("files", "folder"),
        ("parquet", "parquet"),
        ("tar", "webdataset"),
        ("files", "parquet"),
        ("parquet", "webdataset"),
        ("tar", "folder"),
    ],
)
def test_export_round_trip(tmp_path: Path, kind: str, fmt: str) -> None:
    source, media, captions = _source(tmp_path, kind)
    coll = tmp_path / "coll"
    embed_corpus(KeywordEncoder(), source, coll, EMBED)
    out = tmp_path / "subset"
    result = export_subset(
        coll, ["red"], KeywordEncoder(), out, ExportConfig(format=fmt, threshold=0.75, progress=False)
    )
    red = _red_keys(media)
    assert result.records == result.images == len(red) == 2 and not result.skipped
    corpus = read_corpus(out)  # the reader train, embed and eval share
    by_image: dict[str, set[str]] = {}
    metadata = {}
    for record in corpus.records:
        by_image.setdefault(record.image, set()).add(record.caption)
        metadata[record.image] = record.metadata
    assert len(by_image) == 2
    for image, texts in by_image.items():
        data = read_ref_bytes(image)
        (key,) = [k for k, v in media.items() if v == data]  # the very bytes of a red image
        assert key in red and texts == captions[key]  # every caption of the image, from its caption items
        meta = metadata[image]
        assert meta["export_query"] == "red" and meta["export_score"] >= 0.75
        assert "source" in meta and "modality" not in meta
    summary = json.loads((out / "export.json").read_text())
    assert summary["records"] == 2 and summary["queries"] == ["red"]


def test_k_where_modality_and_bad_input(tmp_path: Path) -> None:
    source, _, _ = _source(tmp_path, "files")
    coll = tmp_path / "coll"
    embed_corpus(KeywordEncoder(), source, coll, EMBED)
    config = ExportConfig(k=3, progress=False)
    result = export_subset(coll, ["red", "a blue dog"], KeywordEncoder(), tmp_path / "a", config)
    assert result.records == result.matched and 4 <= result.matched <= 6  # 3 per query; they may overlap
    result = export_subset(coll, ["red"], KeywordEncoder(), tmp_path / "b", config, where={"split": "train"})
    kept = read_corpus(tmp_path / "b")
    assert all(r.metadata["split"] == "train" for r in kept.records)
    texts = export_subset(coll, ["dog"], KeywordEncoder(), tmp_path / "c", config.replace(modality="texts"))
    assert texts.records >= 1 and all(r.image is not None for r in read_corpus(tmp_path / "c").records)
    with pytest.raises(ValueError, match=r"exists and is not empty.*--overwrite"):
        export_subset(coll, ["red"], KeywordEncoder(), tmp_path / "a", config)
    export_subset(coll, ["red"], KeywordEncoder(), tmp_path / "a", config.replace(overwrite=True, k=1))
    assert len({r.image for r in read_corpus(tmp_path / "a").records}) == 1
    with pytest.raises(ValueError, match="non-empty text queries"):
        export_subset(coll, ["  "], KeywordEncoder(), tmp_path / "d", config)
    with pytest.raises(ValueError, match=r"fingerprint|model"):
        export_subset(coll, ["red"], KeywordEncoder(salt="other"), tmp_path / "e", config)
    with pytest.raises(
        ValueError, match=r"ExportConfig.threshold \(--threshold\) must be a cosine.*received 2"
    ):
        ExportConfig(threshold=2)


def test_missing_media_is_skipped_and_counted(tmp_path: Path) -> None:
    source, _, _ = _source(tmp_path, "files")
    coll = tmp_path / "coll"
    embed_corpus(KeywordEncoder(), source, coll, EMBED)
    for path in (tmp_path / "images").glob("img_0000[08].png"):  # the two red images
        path.unlink()
    result = export_subset(
        coll, ["red"], KeywordEncoder(), tmp_path / "out", ExportConfig(k=4, progress=False)
    )
    assert result.skipped == {"media unreadable": 2} and result.records == 2


def test_captions_alone_and_an_empty_collection(tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("a red car\na blue dog\nthe green cat\n")
    coll = tmp_path / "coll"
    embed_corpus(KeywordEncoder(), captions, coll, EMBED.replace(modality="texts"))
    for fmt in FORMATS:
        out = tmp_path / fmt
        result = export_subset(
            coll, ["red car"], KeywordEncoder(), out, ExportConfig(format=fmt, k=1, progress=False)
        )
        assert result.records == 1 and result.images == 0
        (record,) = read_corpus(out).records
        assert record.image is None and record.caption == "a red car"
    with Collection.create(
        tmp_path / "empty",
        dim=KeywordEncoder.embed_dim,
        index="Flat",
        fingerprint=KeywordEncoder().fingerprint(),
    ):
        pass
    with pytest.raises(EmptyCollectionError):
        export_subset(tmp_path / "empty", ["red"], KeywordEncoder(), tmp_path / "none", ExportConfig())


def test_cli_export_round_trip_through_embed_eval_and_train(tmp_path: Path, capsys) -> None:
    from retrieval.cli import main
    from retrieval.model import build_model

    from support.tiny import CNN_GRU

    rows = write_corpus(tmp_path / "images", 16)
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tmp_path / "model"
    build_model(CNN_GRU, captions=[r["caption"] for r in rows], device="cpu").save(model)
    coll = tmp_path / "coll"
    quiet = ["--no-progress", "-q"]
    assert (
        main(
            [
                "embed",
                str(manifest),
                "--model",
                str(model),
                "--out",
                str(coll),
                "--workers",
                "0",
                "--index",
                "Flat",
                *quiet,
            ]
        )
        == 0
    )
    queries = tmp_path / "queries.txt"
    queries.write_text("a red dog\na blue cat\n")
    out = tmp_path / "subset"
    argv = [
        "export",
        str(coll),
        "--query-file",
        str(queries),
        "--query",
        "a green car",
        "-k",
        "3",
        "--out",
        str(out),
        "--format",
        "webdataset",
    ]
    assert main([*argv, *quiet]) == 0  # the model `embed` recorded
    assert "exported" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "shard-00000.tar"]
    assert (
        main(
            [
                "embed",
                str(out),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "again"),
                "--workers",
                "0",
                *quiet,
            ]
        )
        == 0
    )
    assert main(["eval", str(out), "--model", str(model), "--out", str(tmp_path / "report"), *quiet]) == 0
    train = tmp_path / "base.json"
    train.write_text(
        json.dumps(
            {
                "model": CNN_GRU.to_dict(),
                "batch_size": 4,
                "device": "cpu",
                "val_fraction": 0.0,
                "hard_negatives": False,
                "checkpoint_every": 0,
            }
        )
    )
    assert (
        main(
            ["train", str(out), "--out", str(tmp_path / "run"), "--config", str(train), "max_steps=1", *quiet]
        )
        == 0
    )
    # bad command lines: both -k and --threshold, no query, a threshold out of range, an existing --out
    assert (
        main(
            [
                "export",
                str(coll),
                "--query",
                "x",
                "-k",
                "2",
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "n"),
            ]
        )
        == 2
    )
    assert main(["export", str(coll), "--out", str(tmp_path / "n")]) == 2
    assert main(["export", str(coll), "--query", "x", "--threshold", "7", "--out", str(tmp_path / "n")]) == 2
    assert "received '7'" in capsys.readouterr().err
    assert main(["export", str(coll), "--query", "x", "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    np.testing.assert_equal(
        sorted(json.loads((out / "export.json").read_text())["queries"]),
        ["a blue cat", "a green car", "a red dog"],
    )
