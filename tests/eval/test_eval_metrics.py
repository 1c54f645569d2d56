"""Metrics against hand-computed rankings and against scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from hbt.eval.metrics import (
    average_precision,
    ndcg_at_k,
    ndcg_graded,
    own_language_first,
    per_query_metrics,
    rank_distance,
    ranks_from_scores,
    recall_at_k,
    reciprocal_rank,
    spread,
)


def test_hand_computed_ranking():
    # Relevant candidates at ranks 1, 3 and 6 of the full ranking.
    ranks = [3, 1, 6]
    assert average_precision(ranks) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert reciprocal_rank(ranks) == 1.0
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 5) == pytest.approx(2 / 3)
    assert recall_at_k(ranks, 10) == 1.0
    dcg = 1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(7)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranks, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 + 1 / math.log2(4)) / idcg)


def test_single_relevant():
    assert average_precision([4]) == 0.25
    assert reciprocal_rank([4]) == 0.25
    assert recall_at_k([4], 1) == 0.0 and recall_at_k([4], 10) == 1.0
    assert ndcg_at_k([1], 10) == 1.0
    assert ndcg_at_k([2], 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k([11], 10) == 0.0


def test_no_relevant_and_bad_ranks():
    assert average_precision([]) == 0.0 and reciprocal_rank([]) == 0.0 and ndcg_at_k([], 10) == 0.0
    with pytest.raises(ValueError):
        average_precision([0, 2])
    with pytest.raises(ValueError):
        average_precision([2, 2])


def test_ranks_from_scores_breaks_ties_by_index():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9])
    # order: 1 (0.9), 4 (0.9), 0 (0.5), 2 (0.5), 3
    assert ranks_from_scores(scores, [1, 4, 0, 2, 3]).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", range(20))
def test_ap_and_ndcg_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    scores = rng.standard_normal(n)  # continuous: no ties, so sklearn's tie handling does not matter
    n_rel = int(rng.integers(1, min(n, 12) + 1))
    rel = rng.choice(n, n_rel, replace=False)
    y = np.zeros(n, dtype=int)
    y[rel] = 1
    ranks = ranks_from_scores(scores, rel)
    assert average_precision(ranks) == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    for k in (1, 10, 50):
        assert ndcg_at_k(ranks, k) == pytest.approx(ndcg_score(y[None], scores[None], k=k), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_graded_ndcg_matches_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    n = 60
    scores = rng.standard_normal(n)
    gains = rng.integers(0, 3, n) * (rng.random(n) < 0.3)
    if gains.sum() == 0:
        gains[0] = 2
    order = np.argsort(-scores)
    assert ndcg_graded(gains[order], gains[gains > 0], 10) == pytest.approx(
        ndcg_score(gains[None], scores[None], k=10), abs=1e-12
    )


def test_graded_ndcg_counts_judged_negatives_as_zero():
    # Ideal ranking from the judged gains only (zeros add nothing).
    assert ndcg_graded([0, 2, 1], [2, 1, 0, 0], 10) == pytest.approx(
        (2 / math.log2(3) + 1 / math.log2(4)) / (2 + 1 / math.log2(3))
    )
    assert ndcg_graded([0, 0], [0, 0], 10) == 0.0


def test_per_query_metrics_shapes():
    pq = per_query_metrics([np.array([1]), np.array([2, 5]), np.array([20])])
    assert set(pq) == {"mAP", "R@1", "R@10", "MRR", "nDCG@10"}
    assert pq["mAP"].tolist() == pytest.approx([1.0, (1 / 2 + 2 / 5) / 2, 1 / 20])
    assert pq["R@1"].tolist() == [1.0, 0.0, 0.0]
    assert pq["R@10"].tolist() == [1.0, 1.0, 0.0]


def test_vectorised_per_query_metrics_match_scalar_functions():
    rng = np.random.default_rng(5)
    ranks = [rng.choice(np.arange(1, 60), int(rng.integers(1, 15)), replace=False) for _ in range(200)]
    ranks.append(np.array([], dtype=np.int64))
    pq = per_query_metrics(ranks)
    for name, f in {"mAP": average_precision, "R@1": lambda r: recall_at_k(r, 1), "R@10": lambda r: recall_at_k(r, 10),
                    "MRR": reciprocal_rank, "nDCG@10": lambda r: ndcg_at_k(r, 10)}.items():
        np.testing.assert_allclose(pq[name], [f(r) for r in ranks], rtol=1e-12, err_msg=name)


def test_bias_helpers():
    assert rank_distance([3, 10, 5]) == 7
    assert rank_distance([4]) == 0
    assert own_language_first([3, 1, 7], ["de", "en", "zh"], "en")
    assert not own_language_first([3, 1, 7], ["de", "en", "zh"], "de")
    assert spread([0.2, 0.5, 0.3]) == pytest.approx((0.3, np.std([0.2, 0.5, 0.3])))
