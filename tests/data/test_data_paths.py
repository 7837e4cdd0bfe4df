"""Manifest image paths resolve exactly as pathlib would (symbolic links, ``.`` / ``..``, ``~``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retrieval.data import read_pairs

VALUES = [
    "b/y.png",
    "./b/y.png",
    "b//y.png",
    "b/./y.png",
    "b/../b/y.png",
    "link/x.png",
    "link/../b/y.png",
    "b/lx.png",
    "missing/z.png",
    "z.png",
    "../real/x.png",
    "b/.",
    "b/..",
    ".",
    "..",
    "b/",
    "link",
    " b/y.png ",
    "/abs/x.png",
    "//abs/x.png",
    "/abs/./x.png",
    "/abs/dir/",
    "/abs/dir/.",
    "/abs/../x.png",
    "~/x.png",
]


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_manifest_paths_match_pathlib(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.png").write_bytes(b"x")
    (tmp_path / "a" / "b" / "y.png").write_bytes(b"y")
    os.symlink(tmp_path / "real", tmp_path / "a" / "link")
    os.symlink(tmp_path / "real" / "x.png", tmp_path / "a" / "b" / "lx.png")
    manifest = tmp_path / "a" / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": v, "caption": "c"}) + "\n" for v in VALUES))

    got = [pair.image for pair in read_pairs(manifest).pairs]

    base = manifest.parent.resolve()
    expected = []
    for value in VALUES:
        path = Path(os.path.expanduser(value.strip()))
        expected.append(str(path if path.is_absolute() else (base / path).resolve()))
    assert got == expected
    assert got[VALUES.index("link/x.png")] == str((tmp_path / "real" / "x.png").resolve())
