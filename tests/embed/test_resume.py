"""A run killed with SIGKILL mid-way is finished by the next run, with the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from indexes import Collection
from retrieval.embed import embed_corpus, state_dir

from support.keywords import KeywordEncoder

TESTS = Path(__file__).resolve().parents[1]  # the support package's folder, for the child process
SCRIPT = """
from retrieval.config import EmbedConfig
from retrieval.embed import embed_corpus
from support.keywords import KeywordEncoder

config = EmbedConfig(batch_size=2, num_workers=0, shard_size=4, progress=False, index="Flat")
embed_corpus(KeywordEncoder(delay=0.2), {manifest!r}, {out!r}, config)
"""


def _contents(path: Path) -> list[tuple[str, str, tuple[float, ...]]]:
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        rows = zip(coll.get(ids), coll.vectors(ids))
        return sorted(
            (m["modality"], m["path"] if m["modality"] == "image" else m["caption"], tuple(np.round(v, 5)))
            for m, v in rows
        )


def test_kill_9_then_rerun_equals_an_uninterrupted_run(corpus, config, tmp_path):
    out = tmp_path / "coll"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(manifest=str(corpus), out=str(out))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    shards = state_dir(out) / "shards"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir() and len(list(shards.glob("*.npz"))) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list(shards.glob("*.npz")))
    assert 2 <= done_before < 10, done_before  # 40 items in shards of 4: interrupted mid-way

    resumed = embed_corpus(KeywordEncoder(), corpus, out, config)
    assert resumed.already_done >= 8 and resumed.embedded == 40 - resumed.already_done > 0
    again = embed_corpus(KeywordEncoder(), corpus, out, config)
    assert again.embedded == 0 and again.added == 0

    embed_corpus(KeywordEncoder(), corpus, tmp_path / "uninterrupted", config)
    assert _contents(out) == _contents(tmp_path / "uninterrupted")
    with Collection.open(out, read_only=True) as coll:
        assert len(coll) == 40
