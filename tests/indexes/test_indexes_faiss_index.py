"""faiss_index: factory strings, kinds, id maps, training sample, parameters, save/load."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from idx_helpers import clustered

from indexes import faiss_index as fi


@pytest.mark.parametrize(
    ("spec", "kind", "nlist", "min_train"),
    [
        ("Flat", "flat", 0, 0),
        ("HNSW32", "hnsw", 0, 0),
        ("IVF1024,Flat", "ivf", 1024, 39 * 1024),
        ("IVF4096,PQ32x8", "ivf", 4096, 39 * 4096),
        ("OPQ32,IVF1024,PQ32", "ivf", 1024, 39 * 1024),
        ("PQ32", "codes", 0, 39 * 256),
    ],
)
def test_specs_build_at_256(spec: str, kind: str, nlist: int, min_train: int) -> None:
    index = fi.build_index(spec, 256, "ip")
    info = fi.describe(index)
    assert (info.kind, info.nlist) == (kind, nlist)
    assert fi.min_train_size(index) == min_train
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert info.supports_remove == (kind != "hnsw")
    if kind != "ivf":
        assert isinstance(index, faiss.IndexIDMap2), "non-IVF kinds keep ids through IndexIDMap2"


def test_ids_params_and_roundtrip(tmp_path: Path) -> None:
    x = clustered(2_000, 16, seed=30)
    ids = np.arange(2_000, dtype=np.int64) * 7 + 3  # arbitrary int64 ids
    index = fi.build_index("IVF16,Flat", 16, "l2")
    assert fi.train_index(index, x, seed=0) == 2_000
    index.add_with_ids(x, ids)
    fi.set_params(index, {"nprobe": 4})
    assert faiss.extract_index_ivf(index).nprobe == 4
    scores, found = fi.index_ids_search(index, x[:5], 3, "l2")
    assert found[:, 0].tolist() == ids[:5].tolist() and (scores <= 0).all(), "negated squared distances"
    fi.write_index(index, tmp_path / "i.faiss")
    for mmap in (False, True):
        again = fi.read_index(tmp_path / "i.faiss", mmap=mmap)
        np.testing.assert_array_equal(fi.index_ids_search(again, x[:5], 3, "l2")[1], found)


def test_training_sample_is_capped() -> None:
    x = clustered(70_000, 4, seed=31)
    index = fi.build_index("IVF4,Flat", 4, "ip")
    assert fi.train_index(index, x, seed=0) == 65_536


def test_hnsw_search_params() -> None:
    index = fi.build_index("HNSW32", 8, "ip")
    fi.set_params(index, {"efSearch": 40})
    sel = faiss.IDSelectorBatch(np.arange(5, dtype=np.int64))
    params = fi.search_params(index, sel, k=10, fraction=0.01)
    assert params.efSearch == 40 * 16, "efSearch grows for selective filters, at most 16x"
    assert fi.search_params(index, None, k=10) is None
