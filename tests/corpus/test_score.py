"""`score_pairs` / `retrieval score`: every pair's cosine, resumable, filtered in the input's format."""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from retrieval.cli import main
from retrieval.corpus import ScoreConfig, score_pairs
from retrieval.data import UnpairedCorpusError, read_corpus
from retrieval.data.images import read_ref_bytes

from support.corpora import write_corpus
from support.keywords import COLORS, KeywordEncoder

QUIET = ScoreConfig(batch_size=4, num_workers=0, chunk_size=5, progress=False)


def _rows(tmp_path: Path, n: int = 16) -> list[dict]:
    """``n`` noisy colour images; every fourth caption names the wrong colour (a shuffled caption)."""
    rows = write_corpus(tmp_path / "images", n)
    names = list(COLORS)
    for i, row in enumerate(rows):
        if i % 4 == 3:
            wrong = names[(names.index(row["caption"].split()[1]) + 3) % len(names)]
            row["caption"] = f"a {wrong} {row['caption'].split()[2]}"
            row["shuffled"] = True
        else:
            row["shuffled"] = False
    return rows


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reference(rows: list[dict]) -> dict[tuple[str, str], float]:
    model = KeywordEncoder()
    images = model.encode_images([r["image"] for r in rows])
    texts = model.encode_texts([r["caption"] for r in rows])
    cos = torch.nn.functional.cosine_similarity(images, texts).tolist()
    return {(r["image"], r["caption"]): c for r, c in zip(rows, cos)}


def _scores(path: Path) -> dict[tuple[str, str], float]:
    return {(r["image"], r["caption"]): r["score"] for r in pq.read_table(path).to_pylist()}


def test_scores_equal_the_cosine_of_each_pair(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    rows[0]["caption"] = [rows[0]["caption"], "a red dog and a cat"]  # two captions of one image
    manifest = _jsonl(tmp_path / "pairs.jsonl", rows)
    result = score_pairs(KeywordEncoder(), manifest, tmp_path / "scores.parquet", QUIET)
    flat = [
        {**r, "caption": c}
        for r in rows
        for c in (r["caption"] if isinstance(r["caption"], list) else [r["caption"]])
    ]
    want = _reference(flat)
    got = _scores(tmp_path / "scores.parquet")
    assert got.keys() == want.keys() and result.scored == 17 and result.pairs == 17
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5)
    table = pq.read_table(tmp_path / "scores.parquet")
    assert {"image", "caption", "image_id", "score", "split", "shuffled"} <= set(table.column_names)
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "scores.state" / "errors.jsonl").exists()
    again = score_pairs(KeywordEncoder(), manifest, tmp_path / "scores.parquet", QUIET)
    assert again.scored == 0 and again.already_done == 17


def test_shuffled_captions_score_lower(tmp_path: Path) -> None:
    rows = _rows(tmp_path, 32)
    score_pairs(KeywordEncoder(), _jsonl(tmp_path / "p.jsonl", rows), tmp_path / "s.parquet", QUIET)
    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    true = [r["score"] for r in table if not r["shuffled"]]
    shuffled = [r["score"] for r in table if r["shuffled"]]
    assert min(true) > max(shuffled)


class Interrupting(KeywordEncoder):
    """Stops (as Ctrl-C would) at its ``stop_at``-th forward batch."""

    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at = stop_at

    def _forward(self) -> None:
        super()._forward()
        if self.calls >= self.stop_at:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    rows = _rows(tmp_path, 20)
    manifest = _jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(KeyboardInterrupt):
        score_pairs(Interrupting(stop_at=7), manifest, tmp_path / "s.parquet", QUIET)
    assert not (tmp_path / "s.parquet").exists()
    shards = list((tmp_path / "s.state" / "shards").glob("*.npz"))
    done = sum(len(np.load(shard)["keys"]) for shard in shards)
    assert shards and 0 < done < 20  # stopped mid-way, with whole shards committed
    resumed = score_pairs(KeywordEncoder(), manifest, tmp_path / "s.parquet", QUIET)
    assert resumed.already_done == done and resumed.scored == 20 - done
    whole = score_pairs(KeywordEncoder(), manifest, tmp_path / "whole.parquet", QUIET)
    assert whole.scored == 20
    assert _scores(tmp_path / "s.parquet") == pytest.approx(_scores(tmp_path / "whole.parquet"))
    # more data later: only the new pairs are scored; another model's scores are refused
    more = _jsonl(tmp_path / "pairs.jsonl", rows + write_corpus(tmp_path / "images", 3, start=20))
    assert score_pairs(KeywordEncoder(), more, tmp_path / "s.parquet", QUIET).scored == 3
    with pytest.raises(ValueError, match=r"s\.state"):
        score_pairs(KeywordEncoder(salt="x"), more, tmp_path / "s.parquet", QUIET)


def test_broken_images_and_unpaired_corpora(tmp_path: Path) -> None:
    rows = _rows(tmp_path, 8)
    Path(rows[2]["image"]).write_bytes(b"not an image")
    Path(rows[5]["image"]).unlink()
    result = score_pairs(KeywordEncoder(), _jsonl(tmp_path / "p.jsonl", rows), tmp_path / "s.parquet", QUIET)
    assert result.skipped == {"decode_error": 1, "missing_file": 1} and result.scored == 6
    errors = (tmp_path / "s.state" / "errors.jsonl").read_text()
    assert rows[2]["image"] in errors and rows[5]["image"] in errors
    captions = tmp_path / "captions.txt"
    captions.write_text("a red car\n")
    with pytest.raises(UnpairedCorpusError, match="no image-caption pair"):
        score_pairs(KeywordEncoder(), captions, tmp_path / "c.parquet", QUIET)


def _kept_pairs(path: Path) -> set[tuple[bytes, str]]:
    return {(read_ref_bytes(r.image), r.caption) for r in read_corpus(path).records}


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet-bytes", "shards", "folder"])
def test_the_filtered_corpus_is_written_in_the_input_format(tmp_path: Path, kind: str) -> None:
    rows = _rows(tmp_path, 16)
    if kind == "jsonl":
        source = _jsonl(tmp_path / "pairs.jsonl", rows)
    elif kind == "csv":
        source = tmp_path / "pairs.csv"
        with source.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet-bytes":
        source = tmp_path / "pairs.parquet"
        pq.write_table(
            pa.table(
                {
                    "image": [
                        {"bytes": Path(r["image"]).read_bytes(), "path": Path(r["image"]).name} for r in rows
                    ],
                    "caption": [r["caption"] for r in rows],
                }
            ),
            source,
        )
    elif kind == "shards":
        source = tmp_path / "shard.tar"
        with tarfile.open(source, "w") as tar:
            for r in rows:
                stem = Path(r["image"]).stem
                for name, data in (
                    (f"{stem}.png", Path(r["image"]).read_bytes()),
                    (f"{stem}.txt", r["caption"].encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    else:  # an image folder with sidecar captions
        source = tmp_path / "images"
        for r in rows:
            Path(r["image"]).with_suffix(".txt").write_text(r["caption"])
    result = score_pairs(KeywordEncoder(), source, tmp_path / "s.parquet", QUIET.replace(keep_above=0.3))
    suffix = {
        "jsonl": ".jsonl",
        "csv": ".csv",
        "parquet-bytes": ".parquet",
        "shards": "",
        "folder": ".jsonl",
    }[kind]
    assert result.filtered == tmp_path / f"s.kept{suffix}" and result.kept == 12  # the 4 shuffled ones go
    want = {(Path(r["image"]).read_bytes(), r["caption"]) for r in rows if not r["shuffled"]}
    assert _kept_pairs(result.filtered) == want
    if kind in ("jsonl", "csv", "folder"):
        assert all(float(r.metadata["score"]) >= 0.3 for r in read_corpus(result.filtered).records)


def test_keep_top_fraction_keeps_exactly_that_share(tmp_path: Path) -> None:
    rows = _rows(tmp_path, 16)
    result = score_pairs(
        KeywordEncoder(), _jsonl(tmp_path / "p.jsonl", rows), tmp_path / "s.parquet",
        QUIET.replace(keep_top_fraction=0.3),
    )  # fmt: skip
    assert result.kept == math.ceil(0.3 * 16)
    kept = read_corpus(result.filtered).records
    scores = sorted((r["score"] for r in pq.read_table(tmp_path / "s.parquet").to_pylist()), reverse=True)
    assert sorted((r.metadata["score"] for r in kept), reverse=True) == pytest.approx(
        scores[: len(kept)], abs=1e-5
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep-above", "1.2"], "--keep-above: must be a cosine between -1 and 1; received '1.2'"),
        (["--keep-above", "nan"], "received 'nan'"),
        (["--keep-top-fraction", "0"], "--keep-top-fraction: must be a fraction above 0 and at most 1"),
        (["--keep-top-fraction", "1.5"], "received '1.5'"),
        (["--keep-above", "0.2", "--keep-top-fraction", "0.5"], "not both"),
        (["--filtered", "x.jsonl"], "--filtered needs"),
    ],
)
def test_bad_filters_are_usage_errors(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    manifest = _jsonl(tmp_path / "p.jsonl", _rows(tmp_path, 4))
    code = main(["score", str(manifest), "--model", "m", "--out", str(tmp_path / "s.parquet"), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_scores_with_a_pretrained_clip_folder(tmp_path: Path, capsys) -> None:
    """A transformers CLIP folder scores like transformers itself."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from support.hf import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    rows = [
        dict(r, caption=c)
        for r, c in zip(
            write_corpus(tmp_path / "images", 6),
            ["a red car", "a blue dog", "the green cat", "a photo", "a big dog", "a small car"],
        )
    ]
    manifest = _jsonl(tmp_path / "pairs.jsonl", rows)
    argv = [
        "score",
        str(manifest),
        "--model",
        str(clip),
        "--out",
        str(tmp_path / "s.parquet"),
        "--keep-top-fraction",
        "0.5",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "scored 6 pairs" in out and "kept 3 of 6" in out
    model = AutoModel.from_pretrained(clip).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(clip), AutoTokenizer.from_pretrained(clip)
    from PIL import Image

    with torch.no_grad():
        images = model.get_image_features(
            **processor(images=[Image.open(r["image"]).convert("RGB") for r in rows], return_tensors="pt")
        ).pooler_output
        texts = model.get_text_features(
            **tokenizer([r["caption"] for r in rows], padding=True, return_tensors="pt")
        ).pooler_output
    want = torch.nn.functional.cosine_similarity(images, texts).numpy()
    got = _scores(tmp_path / "s.parquet")
    np.testing.assert_allclose([got[(r["image"], r["caption"])] for r in rows], want, atol=1e-4)
    assert len(read_corpus(tmp_path / "s.kept.jsonl").records) == 3


def test_a_pretrained_siglip_loaded_by_name_scores_its_own_cosines(tmp_path: Path) -> None:
    from retrieval.model import load_model

    from support.hf import save_tiny_siglip

    siglip = load_model(str(save_tiny_siglip(tmp_path / "siglip")), device="cpu")
    rows = [
        dict(r, caption=c)
        for r, c in zip(
            write_corpus(tmp_path / "images", 4), ["a red car", "a blue dog", "the cat", "a photo"]
        )
    ]
    result = score_pairs(siglip, _jsonl(tmp_path / "pairs.jsonl", rows), tmp_path / "s.parquet", QUIET)
    assert result.scored == 4
    images = siglip.encode_images([r["image"] for r in rows])
    texts = siglip.encode_texts([r["caption"] for r in rows])
    want = (images * texts).sum(dim=1).numpy()
    got = _scores(tmp_path / "s.parquet")
    np.testing.assert_allclose([got[(r["image"], r["caption"])] for r in rows], want, atol=1e-5)
