"""Retrieval metrics as pure numpy functions.

Most functions take the 1-based ranks of a query's relevant candidates in the
full ranking of its pool (see :meth:`hbt.eval.index.ShardedIndex.rank_of`).
From those ranks alone AP, recall@k, reciprocal rank and binary nDCG@k are
exact. Definitions, with the language-bias metrics, are in ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Cut-offs reported for the LAReQA-style benchmarks.
LAREQA_METRICS = ("mAP", "R@1", "R@10", "MRR", "nDCG@10")


def _ranks(ranks: Sequence[int] | np.ndarray) -> np.ndarray:
    r = np.sort(np.asarray(ranks, dtype=np.int64))
    if r.size and (r[0] < 1 or np.any(np.diff(r) == 0)):
        raise ValueError(f"ranks must be distinct and >= 1, got {r.tolist()}")
    return r


def average_precision(ranks: Sequence[int] | np.ndarray) -> float:
    """Average precision over the full ranking (LAReQA's mAP is its mean over queries).

    ``AP = (1/|R|) * sum_i i / rank_i`` over the relevant candidates sorted by
    rank: the precision at each relevant candidate's rank, averaged.

    Args:
        ranks: 1-based ranks of all of the query's relevant candidates.

    Returns:
        AP in [0, 1]; 0 for a query with no relevant candidate.
    """
    r = _ranks(ranks)
    if r.size == 0:
        return 0.0
    return float(np.mean(np.arange(1, r.size + 1) / r))


def reciprocal_rank(ranks: Sequence[int] | np.ndarray) -> float:
    """1 / rank of the best-ranked relevant candidate (no cut-off); 0 if none."""
    r = _ranks(ranks)
    return float(1.0 / r[0]) if r.size else 0.0


def recall_at_k(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Fraction of the relevant candidates ranked in the top ``k`` (0 if none)."""
    r = _ranks(ranks)
    return float(np.mean(r <= k)) if r.size else 0.0


def ndcg_at_k(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Binary-gain nDCG@k: ``sum_{rank<=k} 1/log2(rank+1)`` over the ideal DCG of ``min(|R|, k)`` hits."""
    r = _ranks(ranks)
    if r.size == 0:
        return 0.0
    dcg = np.sum(1.0 / np.log2(r[r <= k] + 1.0))
    idcg = np.sum(1.0 / np.log2(np.arange(1, min(r.size, k) + 1) + 1.0))
    return float(dcg / idcg)


def ndcg_graded(
    ranked_gains: Sequence[float] | np.ndarray, judged_gains: Sequence[float] | np.ndarray, k: int
) -> float:
    """Graded nDCG@k with linear gains (trec_eval's ``ndcg_cut``, as MIRACL reports it).

    Args:
        ranked_gains: the gain of each retrieved document, in rank order
            (0 for unjudged or non-relevant).
        judged_gains: the gains of every judged document of the query (ideal ranking).
        k: the cut-off.

    Returns:
        nDCG@k in [0, 1]; 0 when no judged document has a positive gain.
    """
    g = np.asarray(ranked_gains, dtype=np.float64)[:k]
    ideal = np.sort(np.asarray(judged_gains, dtype=np.float64))[::-1][:k]
    idcg = np.sum(ideal / np.log2(np.arange(2, ideal.size + 2)))
    if idcg <= 0:
        return 0.0
    return float(np.sum(g / np.log2(np.arange(2, g.size + 2))) / idcg)


def per_query_metrics(ranks_per_query: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The LAReQA metric set for each query, vectorised over queries.

    Same definitions as :func:`average_precision`, :func:`recall_at_k`,
    :func:`reciprocal_rank` and :func:`ndcg_at_k` (tested against them).

    Args:
        ranks_per_query: per query, the 1-based ranks of its relevant candidates.

    Returns:
        ``{"mAP", "R@1", "R@10", "MRR", "nDCG@10"} -> (num_queries,)`` arrays
        (``mAP`` holds each query's AP; the metric is their mean).
    """
    nq = len(ranks_per_query)
    width = max((len(r) for r in ranks_per_query), default=0)
    # Pad to a (queries x max relevant) matrix; inf marks "no candidate here".
    r = np.full((nq, max(width, 1)), np.inf)
    for i, ranks in enumerate(ranks_per_query):
        r[i, : len(ranks)] = np.sort(np.asarray(ranks, dtype=np.float64))
    n = np.isfinite(r).sum(1)
    safe_n = np.maximum(n, 1)
    pos = np.arange(1, r.shape[1] + 1)
    ap = (pos / r).sum(1) / safe_n  # pos/inf = 0 for padding
    recall = {k: (r <= k).sum(1) / safe_n for k in (1, 10)}
    mrr = 1.0 / r[:, 0]
    gain = np.where(r <= 10, 1.0 / np.log2(r + 1.0), 0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(1, 11) + 1.0))
    ndcg = gain.sum(1) / ideal[np.clip(n, 1, 10) - 1]
    empty = n == 0
    out = {"mAP": ap, "R@1": recall[1], "R@10": recall[10], "MRR": mrr, "nDCG@10": ndcg}
    for v in out.values():
        v[empty] = 0.0
    return out


def rank_distance(ranks: Sequence[int] | np.ndarray) -> int:
    """Rank distance between the best- and worst-ranked relevant candidates (0 with one)."""
    r = np.asarray(ranks, dtype=np.int64)
    return int(r.max() - r.min()) if r.size else 0


def own_language_first(ranks: Sequence[int] | np.ndarray, langs: Sequence[str], query_lang: str) -> bool:
    """Whether the best-ranked relevant candidate is in the query's own language.

    Args:
        ranks: ranks of the query's relevant candidates.
        langs: the language of each of those candidates (same order).
        query_lang: the query's language.
    """
    r = np.asarray(ranks)
    if r.size == 0:
        return False
    return langs[int(np.argmin(r))] == query_lang


# Scores within this fraction of the query's score scale count as ties. BLAS
# kernels sum a dot product in an order that depends on the candidate's column
# position (OpenBLAS' Haswell kernels, say), so two identical candidates can
# score a few ulps apart; without a tolerance such "ties" would be broken by
# rounding noise instead of by id. A float32 dot product of unit vectors
# typically errs by sqrt(d) * 6e-8 (1.2e-6 at d = 384; the ulps seen between
# copies are ~6e-8); real scores this close are ties for every metric we report.
TIE_RTOL = 1e-6


def tie_tolerance(top_scores: np.ndarray | float) -> np.ndarray | float:
    """The absolute tie tolerance for a query whose best score is ``top_scores``.

    ``TIE_RTOL * max(1, |top|)``: an absolute 1e-6 for cosine scores, relative
    for unnormalised inner products. :meth:`hbt.eval.index.ShardedIndex.search`,
    :meth:`~hbt.eval.index.ShardedIndex.rank_of` and :func:`ranks_from_scores`
    share it.
    """
    return TIE_RTOL * np.maximum(1.0, np.abs(top_scores))


def ranks_from_scores(scores: np.ndarray, relevant: Sequence[int]) -> np.ndarray:
    """Reference: 1-based ranks of ``relevant`` in one full ranking of ``scores``.

    Candidate ``c`` ranks before ``r`` when ``s_c > s_r + tol``, or when the two
    are within ``tol`` (:func:`tie_tolerance`) and ``c < r``: the order the
    index search uses. O(N) per relevant item; meant for tests and small pools.
    """
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevant, dtype=np.int64)
    idx = np.arange(s.size)
    tol = tie_tolerance(s.max()) if s.size else 0.0
    return np.array(
        [1 + np.sum((s > s[j] + tol) | ((np.abs(s - s[j]) <= tol) & (idx < j))) for j in rel], dtype=np.int64
    )


def per_query_key(metric_key: str) -> str:
    """The per-query array a metric is the mean of: ``.../mAP`` (or a bare ``mAP``) of ``.../AP``; others are their own.

    The one definition for the evaluation (which stores the arrays) and the study (which resamples them).
    """
    head, _, last = metric_key.rpartition("/")
    if last == "mAP":
        return f"{head}/AP" if head else "AP"
    return metric_key


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(max - min, population std) of a set of per-language scores."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.max() - v.min()), float(v.std())
