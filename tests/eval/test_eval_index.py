"""Sharded search equals unsharded search; exact ranks equal a naive full sort."""

from __future__ import annotations

import numpy as np
import pytest

from hbt.eval.index import ShardedIndex
from hbt.eval.metrics import ranks_from_scores


def _data(seed: int, n: int = 800, d: int = 24, nq: int = 120):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # Exact duplicates spread over shards: equal scores that only the id tie-break orders.
    if n >= 100:
        x[n // 2 : n // 2 + 30] = x[10:40]
        x[n - 25 :] = x[5]
    q = rng.standard_normal((nq, d)).astype(np.float32)
    q[:3] = 0.0  # every candidate ties for these queries
    q[3:6] = x[5]  # the duplicated candidate is the top hit, 26 times over
    return x, q


def _naive_topk(x: np.ndarray, q: np.ndarray, k: int):
    """Brute force under the documented order: score, then id among scores within the tie tolerance."""
    s = q @ x.T
    order = np.stack([np.argsort(ranks_from_scores(row, np.arange(x.shape[0])), kind="stable") for row in s])[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("num_shards", [2, 3, 7])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_sharded_topk_equals_unsharded(num_shards, k):
    x, q = _data(num_shards * 100 + k)
    s1, i1 = ShardedIndex(x, 1).search(q, k)
    sn, i_n = ShardedIndex(x, num_shards).search(q, k)
    np.testing.assert_allclose(sn, s1, atol=1e-6)
    np.testing.assert_array_equal(i_n, i1)
    # and both equal a brute-force sort with the id tie-break
    s_ref, i_ref = _naive_topk(x, q, k)
    np.testing.assert_allclose(s1, s_ref, atol=1e-5)
    np.testing.assert_array_equal(i1[:3], i_ref[:3])  # the all-tie queries: ids 0..k-1
    assert i1[:3].tolist() == [list(range(k))] * 3
    assert set(i1[3, : min(k, 26)]) <= {5, *range(x.shape[0] - 25, x.shape[0])}


def test_k_larger_than_pool_pads():
    x, q = _data(1, n=40, nq=5)
    s, i = ShardedIndex(x, 7).search(q, 50)
    assert s.shape == (5, 50) and i.shape == (5, 50)
    assert (i[:, 40:] == -1).all() and np.isneginf(s[:, 40:]).all()
    assert sorted(i[0, :40].tolist()) == list(range(40))


def test_more_shards_than_candidates():
    x, q = _data(2, n=40, nq=4)
    x = x[:3]
    idx = ShardedIndex(x, 7)
    assert idx.num_shards == 3
    s, i = idx.search(q, 2)
    np.testing.assert_array_equal(i, ShardedIndex(x, 1).search(q, 2)[1])


@pytest.mark.parametrize("num_shards", [1, 3, 7])
def test_rank_of_equals_full_sort(num_shards):
    x, q = _data(7)
    rng = np.random.default_rng(0)
    rel = [rng.choice(x.shape[0], int(rng.integers(1, 12)), replace=False) for _ in range(q.shape[0])]
    rel[3] = np.array([5, x.shape[0] - 1, x.shape[0] - 25])  # duplicates of the top hit
    ranks = ShardedIndex(x, num_shards).rank_of(q, rel, block=37)
    s = q @ x.T
    for i in range(q.shape[0]):
        np.testing.assert_array_equal(ranks[i], ranks_from_scores(s[i], rel[i]))
    assert ranks[3].tolist() == [1, 26, 2]


def test_rank_of_agrees_with_search():
    x, q = _data(11)
    idx = ShardedIndex(x, 3)
    _, ids = idx.search(q, 20)
    ranks = idx.rank_of(q, [row for row in ids])
    for r in ranks:
        assert r.tolist() == list(range(1, 21))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_neighbours(kind):
    x, q = _data(3, n=2000, d=16, nq=50)
    _, exact = ShardedIndex(x, 2).search(q, 10)
    _, approx = ShardedIndex(x, 2, kind=kind, ivf_nlist=16, ivf_nprobe=8, hnsw_m=16).search(q, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact[6:], approx[6:])])
    assert overlap > 0.8


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown index kind"):
        ShardedIndex(np.zeros((4, 2), np.float32), kind="lsh")


@pytest.mark.parametrize("num_shards", [1, 4])
def test_duplicates_at_different_columns_tie_by_id(num_shards):
    """Identical candidates at columns that BLAS kernels treat differently score as one tie.

    OpenBLAS' Haswell kernels (OPENBLAS_CORETYPE=Haswell) sum a dot product in an
    order that depends on the column, so exact copies can differ in the last bit;
    the tie tolerance must still order them by id, in search and rank_of alike.
    """
    rng = np.random.default_rng(42)
    n, d = 1537, 384  # d and the columns below straddle kernel block edges
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cols = [3, 518, 1023, 1024, 1536]
    for c in cols[1:]:
        x[c] = x[cols[0]]
    q = np.repeat(x[cols[0]][None, :], 5, axis=0) + 1e-3 * rng.standard_normal((5, d)).astype(np.float32)
    q = np.concatenate([q, rng.standard_normal((20, d)).astype(np.float32)])
    idx = ShardedIndex(x, num_shards)
    _, ids = idx.search(q, 10)
    assert ids[:5, :5].tolist() == [cols] * 5  # the copies, consecutive and by id
    ranks = idx.rank_of(q, [np.array(cols)] * q.shape[0])
    for i in range(5):
        assert ranks[i].tolist() == [1, 2, 3, 4, 5]
    for i in range(q.shape[0]):
        # the copies always occupy consecutive ranks, in id order
        r = ranks[i]
        assert np.all(np.diff(r) == 1), r
    # rank_of agrees with search on every returned id
    for row, r in zip(ids, idx.rank_of(q, [row for row in ids])):
        assert r.tolist() == list(range(1, 11))
