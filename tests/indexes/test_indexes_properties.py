"""Property tests: random add/remove/save/compact/reopen/search sequences against a dict model."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from indexes import Collection, Limits

D = 4
GROUPS = ["a", "b", "c"]


def make_machine(root: Path, spec: str, metric: str) -> type[RuleBasedStateMachine]:
    counter = itertools.count()

    class CollectionMachine(RuleBasedStateMachine):
        """The collection must agree with ``self.model`` (id -> (vector, metadata)) at every step."""

        @initialize()
        def create(self) -> None:
            self.path = root / f"c{next(counter)}"
            self.coll = Collection.create(self.path, D, metric=metric, index=spec)
            self.model: dict[int, tuple[np.ndarray, dict]] = {}
            self.saved: dict[int, tuple[np.ndarray, dict]] = {}
            self.next_id = self.saved_next_id = 0

        @rule(n=st.integers(0, 30), seed=st.integers(0, 2**16), with_meta=st.booleans())
        def add(self, n: int, seed: int, with_meta: bool) -> None:
            rng = np.random.default_rng(seed)
            x = rng.integers(-3, 4, size=(n, D)).astype(np.float64)  # small integers: ties are common
            meta = [{"g": GROUPS[int(v)], "v": int(v)} for v in rng.integers(0, 3, n)] if with_meta else None
            ids = self.coll.add(x, meta)
            assert ids.tolist() == list(range(self.next_id, self.next_id + n))
            for j, i in enumerate(ids):
                self.model[int(i)] = (x[j].astype(np.float32), meta[j] if meta else {})
            self.next_id += n

        @precondition(lambda self: len(self.model) > 0)
        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            ids = data.draw(
                st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=10, unique=True)
            )
            self.coll.remove(ids)
            for i in ids:
                del self.model[i]

        @rule(bad=st.integers(10_000, 20_000))
        def remove_unknown(self, bad: int) -> None:
            with pytest.raises(ValueError, match="unknown or removed"):
                self.coll.remove([bad])

        @rule()
        def save(self) -> None:
            self.coll.save()
            self.saved, self.saved_next_id = dict(self.model), self.next_id

        @rule(save_first=st.booleans())
        def reopen(self, save_first: bool) -> None:
            if save_first:
                self.save()
            self.coll._dirty = False  # discard silently: the model rolls back to the saved state
            self.coll.close()
            self.coll = Collection.open(self.path)
            self.model, self.next_id = dict(self.saved), self.saved_next_id

        @rule(force=st.booleans())
        def compact(self, force: bool) -> None:
            self.coll.compact(force=force)  # saves pending changes first, then merges and commits
            self.saved, self.saved_next_id = dict(self.model), self.next_id

        @rule()
        def reader_sees_saved_state(self) -> None:
            with Collection.open(self.path, read_only=True) as reader:
                assert reader.ids().tolist() == sorted(self.saved)
                assert reader.get(sorted(self.saved)) == [self.saved[i][1] for i in sorted(self.saved)]

        @rule(seed=st.integers(0, 2**16), k=st.integers(1, 12), group=st.sampled_from([None, *GROUPS]))
        def search(self, seed: int, k: int, group: str | None) -> None:
            q = np.random.default_rng(seed).standard_normal((3, D)).astype(np.float32)
            where = None if group is None else {"g": group}
            if where is not None and "g" not in self.coll.fields():
                with pytest.raises(ValueError, match="unknown filter field"):
                    self.coll.search(q, k, where=where)
                return
            scores, ids = self.coll.search(q, k, where=where)
            eligible = [i for i, (_, m) in self.model.items() if group is None or m.get("g") == group]
            want = min(k, len(eligible))
            assert ((ids >= 0).sum(axis=1) == want).all()
            assert np.isin(ids[ids >= 0], eligible).all()
            for r in range(3):
                assert len(set(ids[r, :want].tolist())) == want, "no duplicates"
            if want and spec == "Flat":
                base = np.stack([self.model[i][0] for i in eligible])  # [m, D]
                if metric == "ip":
                    ref = q @ base.T
                else:
                    ref = -((q[:, None, :] - base[None]) ** 2).sum(axis=2)
                ref = -np.sort(-ref, axis=1)[:, :want]
                np.testing.assert_allclose(scores[:, :want], ref, rtol=1e-5, atol=1e-4)
            if want:
                # every returned score is the exact score of the returned id
                vecs = np.stack([self.model[int(i)][0] for i in ids[:, :want].ravel()]).reshape(3, want, D)
                exact = (
                    np.einsum("nd,nkd->nk", q, vecs) if metric == "ip" else -((vecs - q[:, None]) ** 2).sum(2)
                )
                np.testing.assert_allclose(scores[:, :want], exact, rtol=1e-5, atol=1e-4)

        @invariant()
        def agrees_with_model(self) -> None:
            if not hasattr(self, "coll"):
                return
            assert len(self.coll) == len(self.model)
            ids = sorted(self.model)
            assert self.coll.ids().tolist() == ids
            if ids:
                assert self.coll.get(ids) == [self.model[i][1] for i in ids]
                np.testing.assert_array_equal(
                    self.coll.vectors(ids), np.stack([self.model[i][0] for i in ids])
                )

        def teardown(self) -> None:
            if hasattr(self, "coll"):
                self.coll._dirty = False
                self.coll.close()

    return CollectionMachine


@pytest.mark.parametrize(
    ("spec", "metric", "buffer_bytes"),
    [
        ("Flat", "ip", None),
        ("Flat", "l2", 200),  # unsaved items go to disk every few adds (the bounded-memory path)
        ("HNSW32", "ip", None),
        ("HNSW32", "ip", 200),
        ("IVF2,Flat", "l2", None),
        ("IVF2,Flat", "ip", 200),
    ],
)
def test_collection_state_machine(
    tmp_path: Path, spec: str, metric: str, buffer_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # unsaved items go to disk every few adds with buffer_bytes; merges happen within a few saves
    limits = Limits(buffer_bytes=buffer_bytes, merge_factor=3, tier_floor=64)
    monkeypatch.setattr(Collection, "default_limits", limits)
    machine = make_machine(tmp_path, spec, metric)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
