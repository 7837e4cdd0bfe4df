"""The command line on corpora as users hold them: photos without captions, a caption list, the
benchmark formats; `train`, `embed` and `eval` read them through the same reader."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.cli import main

from support.images import jpeg_bytes, rgb_image, write_image
from support.keywords import COLORS
from support.tiny import CNN_GRU

NAMES = list(COLORS)[:6]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from retrieval.model import build_model

    torch.manual_seed(0)
    model = build_model(CNN_GRU, captions=[f"a {c} photo" for c in COLORS], device="cpu")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save(folder)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        write_image(folder / f"{name}.png", name, seed=i)
    return folder


def _embed(source: Path, out: Path, model_dir: Path, *extra: str) -> int:
    argv = ["embed", str(source), "--model", str(model_dir), "--out", str(out), "--workers", "0"]
    return main([*argv, "--index", "Flat", "--no-progress", *extra])


def test_photo_folder_then_search_then_the_readme_eval_line(photos, model_dir, tmp_path, capsys):
    coll = tmp_path / "my_collection"
    assert _embed(photos, coll, model_dir) == 0
    assert "embedded 6, already done 0, skipped 0 (none)" in capsys.readouterr().out
    assert main(["search", str(coll), "a red photo", "-k", "2", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and all(h["metadata"]["modality"] == "image" for h in hits)
    # the README's eval line: test pairs whose images are not in the collection
    test_images = tmp_path / "test_images"
    test_images.mkdir()
    rows = []
    for i, name in enumerate(("black", "white")):
        write_image(test_images / f"{name}.png", name, seed=10 + i)
        rows.append({"image": f"test_images/{name}.png", "caption": f"a {name} photo"})
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["eval", str(tmp_path / "test.jsonl"), "--model", str(model_dir), "--collection", str(coll)]
    assert main([*argv, "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "index t2i" in printed and "added to a scratch copy" in printed
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert summary["index"]["added_images"] == 2 and "index/t2i/R@1" in summary["metrics"]


def test_captions_alone_with_modality_texts(model_dir, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"a {c} photo\n" for c in NAMES), encoding="utf-8")
    coll = tmp_path / "captions.coll"
    assert _embed(captions, coll, model_dir, "--modality", "texts") == 0
    assert "embedded 6" in capsys.readouterr().out
    query = tmp_path / "q.png"
    write_image(query, "red", seed=0)
    assert main(["search", str(coll), "--image", str(query), "-k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["metadata"]["caption"].endswith("photo") for h in hits)
    assert _embed(captions, tmp_path / "x.coll", model_dir, "--modality", "images") == 3
    assert (
        "holds 6 captions without an image; --modality texts or both embeds them" in capsys.readouterr().err
    )


def test_empty_and_all_skipped_corpora_exit_3_with_counts(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _embed(tmp_path / "empty", tmp_path / "e.coll", model_dir) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: nothing could be read from") and "(read as image folder)" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.jpg", "b.png", "c.webp", "d.gif"):
        (broken / name).write_bytes(b"these bytes are no image")
    assert _embed(broken, tmp_path / "b.coll", model_dir) == 3
    err = capsys.readouterr().err
    assert "all 4 items were skipped (4 image could not be decoded)" in err and str(broken / "a.jpg") in err
    rows = ["{broken", json.dumps({"image": "http://example.com/a.jpg"}), json.dumps({"other": 1})]
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert _embed(tmp_path / "bad.jsonl", tmp_path / "j.coll", model_dir) == 3
    err = capsys.readouterr().err
    assert "read as JSON Lines manifest" in err and "1 invalid JSON" in err and "1 remote image URL" in err


def test_partly_broken_corpus_prints_counts_and_first_reasons_without_verbose(
    photos, model_dir, tmp_path, capsys
):
    (photos / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert _embed(photos, tmp_path / "c", model_dir) == 0
    out = capsys.readouterr().out
    assert "embedded 6" in out and "skipped 1 (1 image could not be decoded)" in out
    assert f"  skipped {photos / 'zz_broken.jpg'}: cannot decode image" in out


def test_train_and_eval_refuse_unpaired_corpora_in_flag_words(photos, model_dir, tmp_path, capsys):
    assert main(["eval", str(photos), "--model", str(model_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no image-caption pair to use for evaluation" in err and "--caption-column" in err
    assert main(["train", str(photos), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no image-caption pair to use for training: it holds 6 images without a caption" in err


def _karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco_images"
    images = []
    for i, name in enumerate(NAMES * 2):
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        folder = root / "val2014"
        folder.mkdir(parents=True, exist_ok=True)
        filename = f"COCO_val2014_{i:012d}.jpg"
        write_image(folder / filename, name, seed=i)
        images.append(
            {"filepath": "val2014", "filename": filename, "split": split, "cocoid": i,
             "sentences": [{"raw": f"a {name} photo"}, {"raw": f"something {name}"}]}
        )  # fmt: skip
    path = tmp_path / "karpathy" / "dataset_coco.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path, root


def test_train_and_eval_read_a_karpathy_split_with_image_root(model_dir, tmp_path, capsys):
    from support.tiny import CNN_GRU as tiny

    data, root = _karpathy(tmp_path)
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"model": tiny.to_dict(), "batch_size": 4, "device": "cpu"}))
    argv = ["train", str(data), "max_steps=2", "epochs=1", "--out", str(tmp_path / "run"), "--config", str(base),
            "--image-root", str(root), "--split", "train", "--val", str(data), "--val-split", "val",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert validation["source"] == "given" and validation["images"] == 2
    capsys.readouterr()
    argv = ["eval", str(data), "--model", str(model_dir), "--image-root", str(root), "--split", "test",
            "--out", str(tmp_path / "r"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "4 captions, 2 images" in capsys.readouterr().out


def test_embed_and_eval_read_a_clip_benchmark_root_and_a_parquet_of_bytes(model_dir, tmp_path, capsys):
    root = tmp_path / "wds"
    for shard in range(3):
        (root / "test").mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for key, data in (
                (f"s{shard}.jpg", jpeg_bytes(rgb_image(seed=shard))),
                (f"s{shard}.txt", b"a\nb"),
            ):
                info = tarfile.TarInfo(key)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("3\n")
    (root / "train").mkdir()
    (root / "train" / "0.tar").write_bytes((root / "test" / "0.tar").read_bytes())
    argv = ["eval", str(root), "--split", "test", "--model", str(model_dir), "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress"]) == 0
    assert "6 captions, 3 images" in capsys.readouterr().out
    assert main(["eval", str(root), "--model", str(model_dir), "--no-progress"]) == 1
    assert "splits ['test', 'train']: name one with --split" in capsys.readouterr().err
    image = pa.array(
        [{"bytes": jpeg_bytes(rgb_image(seed=i)), "path": f"{i}.jpg"} for i in range(4)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image}), tmp_path / "train-00000.parquet")
    coll = tmp_path / "bytes.coll"
    assert _embed(tmp_path / "train-00000.parquet", coll, model_dir) == 0
    assert "embedded 4" in capsys.readouterr().out
    assert _embed(tmp_path / "train-00000.parquet", coll, model_dir) == 0  # resumes: keys are stable
    assert "embedded 0, already done 4" in capsys.readouterr().out
    assert main(["search", str(coll), "a photo", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["path"].startswith("parquet://")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "D", "--out", "o"],
        ["embed", "D", "--model", "m", "--out", "o"],
        ["eval", "D", "--model", "m"],
        ["match", "train", "D", "--model", "m"],
        ["classify", "train", "D", "--model", "m", "--out", "o"],
        ["classify", "eval", "D", "--model", "m", "--classifier", "c", "--out", "o"],
    ],
)
def test_every_command_reading_data_takes_the_reading_options(argv):
    from retrieval.cli import build_parser
    from retrieval.cli.data_options import read_options
    from retrieval.cli.options import given
    from retrieval.config import EmbedConfig, EvalConfig

    extra = ["--image-root", "imgs", "--image-column", "jpg", "--caption-column", "txt", "--split", "test"]
    args = build_parser().parse_args([*argv, *extra])
    seen = {**read_options(args), **given(args, EmbedConfig), **given(args, EvalConfig)}
    seen.setdefault("split", getattr(args, "split", None))  # classify's own --split
    assert seen == {"image_root": "imgs", "image_column": "jpg", "caption_column": "txt", "split": "test"}


def test_eval_prints_what_it_skipped_without_verbose(photos, model_dir, tmp_path, capsys):
    rows = [json.dumps({"image": f"photos/{n}.png", "caption": f"a {n} photo"}) for n in NAMES[:3]]
    rows += [
        "{broken",
        json.dumps({"image": "photos/red.png", "caption": ""}),
        json.dumps({"image": "photos/blue.png"}),
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    argv = ["eval", str(tmp_path / "test.jsonl"), "--model", str(model_dir), "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (
        "(JSON Lines manifest): 3 skipped (1 invalid JSON, 1 empty caption, 1 no caption); the first:" in out
    )
