"""The Ray Data engine writes the same collection as the local one."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from indexes import Collection
from retrieval.embed import embed_corpus

from support.keywords import KeywordEncoder
from support.tiny import CNN_GRU

pytestmark = pytest.mark.ray


def _contents(path):
    with Collection.open(path, read_only=True) as coll:
        ids = coll.ids()
        return [
            (m["modality"], m["path"], m["caption"], tuple(np.round(v, 5)))
            for m, v in zip(coll.get(ids), coll.vectors(ids))
        ]


@pytest.fixture(scope="module")
def local_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:  # the distributed extra is not installed
        print(f"skipping the Ray engine test: ray cannot be imported ({exc})")
        pytest.skip(f"ray cannot be imported: {exc}")
    import ray.cloudpickle

    # The fake encoder lives in a test folder Ray workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[KeywordEncoder.__module__])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # no token written to the home folder
        for attempt in (1, 2):
            try:
                ray.init(
                    num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"]
                )
                break
            except Exception as exc:  # Ray gives its node a fixed 30 s to start; a loaded machine can miss it
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
        yield ray
        ray.shutdown()


@pytest.mark.slow  # starts a Ray cluster: tens of seconds
def test_ray_engine_equals_local_engine(local_ray, corpus, config, tmp_path):
    rows = corpus.read_text().splitlines()
    broken = rows[2].split('"image": "')[1].split('"')[0]
    with open(broken, "wb") as fh:
        fh.write(b"broken")
    local = embed_corpus(KeywordEncoder(), corpus, tmp_path / "local", config)
    distributed = embed_corpus(
        KeywordEncoder(), corpus, tmp_path / "ray", config.replace(engine="ray", num_actors=2)
    )
    assert distributed.embedded == local.embedded == 39
    assert distributed.skipped == local.skipped == {"decode_error": 1}
    assert _contents(tmp_path / "ray") == _contents(tmp_path / "local")
    again = embed_corpus(KeywordEncoder(), corpus, tmp_path / "ray", config.replace(engine="ray"))
    assert again.embedded == 0


@pytest.mark.slow
def test_ray_engine_with_a_real_twin_encoder(local_ray, corpus, config, tmp_path):
    import torch

    from retrieval.model import build_model

    torch.manual_seed(0)
    model = build_model(CNN_GRU, captions=["a red dog", "a blue car"], device="cpu")
    embed_corpus(model, corpus, tmp_path / "local", config)
    embed_corpus(model, corpus, tmp_path / "ray", config.replace(engine="ray"))
    local, distributed = _contents(tmp_path / "local"), _contents(tmp_path / "ray")
    assert [row[:3] for row in local] == [row[:3] for row in distributed]
    np.testing.assert_allclose([row[3] for row in local], [row[3] for row in distributed], atol=1e-4)
