"""The seeded global shuffle: same permutation on every worker, disjoint shards, resumable, many articles per batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hbt.config import PROJECT_ROOT
from hbt.data.batches import GlobalBatches, canonical_order, epoch_permutation


def test_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(100, 3, 0)
    assert np.array_equal(a, epoch_permutation(100, 3, 0))  # every worker derives the same one
    assert not np.array_equal(a, epoch_permutation(100, 3, 1))  # a new order each epoch
    assert not np.array_equal(a, epoch_permutation(100, 4, 0))
    assert sorted(a.tolist()) == list(range(100))


def test_worker_slices_are_disjoint_and_cover_each_global_batch():
    gb = GlobalBatches(100, 16, seed=0)
    assert gb.steps_per_epoch == 6
    for epoch in range(2):
        seen: set[int] = set()
        for k in range(gb.steps_per_epoch):
            parts = [gb.worker_rows(epoch, k, r, 4) for r in range(4)]
            assert np.array_equal(np.concatenate(parts), gb.rows(epoch, k))
            flat = np.concatenate(parts).tolist()
            assert len(set(flat)) == 16 and not seen & set(flat)
            seen |= set(flat)


def test_resume_position_replays_the_same_rows():
    gb = GlobalBatches(50, 8, seed=1)
    straight = [gb.rows(*gb.position(s)).tolist() for s in range(20)]
    # a run resumed at step 9 recomputes (epoch, index) from its TrainState
    resumed = straight[:9] + [gb.rows(*gb.position(s)).tolist() for s in range(9, 20)]
    assert straight == resumed
    assert gb.position(6) == (1, 0)


def test_canonical_order_ignores_read_order():
    h = np.array([5, 1, 9, 3], dtype=np.int64)
    perm = np.array([2, 0, 3, 1])
    assert np.array_equal(h[canonical_order(h)], h[perm][canonical_order(h[perm])])


def test_too_few_rows_for_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatches(5, 8, seed=0)


def test_inspect_on_the_local_config_masks_every_false_negative():
    """The must-show: `hbt data inspect --config configs/local.yaml --steps 100` (2 workers, global batch 32)."""
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "data", "inspect", "--config", "configs/local.yaml",
                          "--steps", "100"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["workers"] == 2 and stats["global_batch_size"] == 32
    for name, s in stats["strategies"].items():
        assert s["epochs_touched"] >= 4  # 100 steps of 32 run over the 807 questions four times
        assert s["same_passage_pairs"] > 0, name
        assert s["unmasked_false_negatives"] == 0 and s["masked"] == s["same_passage_pairs"], name
        assert s["articles_per_batch"] >= 10, name
        assert s["qid_duplicates"] == 0, name
