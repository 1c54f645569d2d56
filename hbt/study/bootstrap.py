"""Paired cluster bootstrap of a difference between two systems, over questions and training seeds.

The unit of resampling is the **cluster** (the study passes the question id):
one question's language versions (7 rows in the monolingual and multilingual
settings) and its X→Y pairs (42 rows) are strongly correlated, so drawing
rows independently would make intervals 2–5× too narrow (the coverage tests in
``tests/study/test_study_bootstrap.py`` show it). Each replicate draws
clusters with replacement, the same draw for both systems (the comparison
stays paired). That is the **question component**, computed on each system's
mean over its seeds.

Training randomness is the **seed component**. Resampling 3 seeds with
replacement would carry only (n-1)/n of their variance and no small-sample tails
(the coverage test in ``tests/study/test_study_bootstrap.py`` shows it falling
short), so each replicate instead carries a seed component built from

- ``V_s = s_a^2/n_a + s_b^2/n_b``, where ``s^2`` is the sample variance (n-1) of a
  system's statistic across its seeds, on all queries, less its question x seed
  interaction. The statistic is a weighted sum of per-question parts; how a seed's parts
  scatter around the question's and the seed's means (a two-way layout) is variance the
  question component already holds, and counting it twice would widen every interval;
- the small-sample tails of Student's t with the Welch-Satterthwaite degrees of freedom
  ``df = (V_q + V_s)^2 / sum((s^2/n)^2 / (n-1))`` (``V_q``: the question component's
  variance, its own degrees of freedom taken as infinite).

Each replicate is the estimate plus (its question deviation + a normal seed draw of
variance ``V_s``) scaled by ``sqrt(df / chi2_df)``: a t_df scale mixture whose spread is the
two components' total. The two components are independent (seed variance is measured on
fixed questions, the question component on fixed seeds), and the replicates' percentiles
give the interval and the one-sided p-values. A system with one seed contributes no seed variance: for the zero-shot
model that is exact, for a trained strategy it is unknown, and the report says so.

The **statistic** is the one the report's score columns show: the mean over
strata (languages, or ordered language pairs) of each stratum's mean, or the
plain mean without strata. ``diff`` is therefore exactly the difference of the
two score columns (each averaged over its seeds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

# Elements of a (replicates x queries) weight matrix processed at once (float64: 32 MB).
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """The outcome of :func:`paired_bootstrap`.

    Attributes:
        diff: ``statistic(a) - statistic(b)``, each averaged over its seeds.
        low: lower end of the percentile confidence interval of ``diff``.
        high: upper end.
        p_value: two-sided bootstrap p-value for ``diff == 0`` (at least ``1 / n_resamples``).
        n_clusters: clusters (questions) resampled.
        n_queries: rows per seed.
        n_resamples: bootstrap replicates.
        confidence: the interval's level.
        replicates: the replicate differences (for one-sided tests at a margin; not serialised).
        var_questions: variance of the question component's replicates.
        seed_var_a: sample variance of system A's statistic across its seeds (0 with one seed).
        seed_var_b: the same for B.
        n_seeds_a: A's seeds.
        n_seeds_b: B's seeds.
        seed_df: the Welch-Satterthwaite degrees of freedom of the whole difference (None without a
            seed component).
        seed_method: ``t`` (the default) or ``resample`` (seeds drawn with replacement; it under-covers,
            kept to show that).
    """

    diff: float
    low: float
    high: float
    p_value: float
    n_clusters: int
    n_queries: int
    n_resamples: int
    confidence: float
    replicates: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    var_questions: float = 0.0
    seed_var_a: float = 0.0
    seed_var_b: float = 0.0
    n_seeds_a: int = 1
    n_seeds_b: int = 1
    seed_df: float | None = None
    seed_method: str = "t"

    @property
    def var_seeds(self) -> float:
        """The seed component's variance, ``s_a^2/n_a + s_b^2/n_b``."""
        return self.seed_var_a / self.n_seeds_a + self.seed_var_b / self.n_seeds_b

    def p_at_most(self, threshold: float) -> float:
        """One-sided p-value against ``H0: diff <= threshold`` (small: the difference lies above it)."""
        return _tail(self.replicates, lambda r: r <= threshold)

    def p_at_least(self, threshold: float) -> float:
        """One-sided p-value against ``H0: diff >= threshold`` (small: the difference lies below it)."""
        return _tail(self.replicates, lambda r: r >= threshold)

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict of the scalar fields."""
        return {k: getattr(self, k) for k in ("diff", "low", "high", "p_value", "n_clusters", "n_queries",
                                              "n_resamples", "confidence", "var_questions", "seed_var_a",
                                              "seed_var_b", "n_seeds_a", "n_seeds_b", "seed_df", "seed_method")}

    def oriented(self, higher_is_better: bool) -> "BootstrapResult":
        """The result with "better" pointing up: unchanged, or negated for a lower-is-better metric."""
        if higher_is_better:
            return self
        return dataclasses.replace(self, diff=-self.diff, low=-self.high, high=-self.low,
                                   replicates=-self.replicates)


def _tail(reps: np.ndarray, pred) -> float:
    if reps.size == 0:
        raise ValueError("no replicates stored")
    return float(max(np.count_nonzero(pred(reps)) / reps.size, 1.0 / reps.size))


def _as_seeds(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n_queries,) or (n_seeds, n_queries), got {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: the bootstrap needs queries")
    bad = ~np.isfinite(arr)
    if bad.any():
        s, q = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{name} has {int(bad.sum())} non-finite score(s) (first: seed {s}, query {q})")
    return arr


def _codes(x: np.ndarray | None, n: int, name: str) -> tuple[np.ndarray, int] | None:
    if x is None:
        return None
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) like the scores, got {arr.shape}")
    _, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1


def _statistic(scores: np.ndarray, strata: tuple[np.ndarray, int] | None) -> np.ndarray:
    """Per row of ``scores`` (..., n): the mean over strata of stratum means (or the plain mean)."""
    if strata is None:
        return scores.mean(axis=-1)
    codes, k = strata
    sums = np.stack([scores[..., codes == s].mean(axis=-1) for s in range(k)], axis=-1)
    return sums.mean(axis=-1)


def _draw_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Per row, how often each of ``n`` items came up in ``n`` uniform draws with replacement.

    Multinomial in distribution; numpy's ``multinomial`` draws one binomial per item,
    30x slower at the thousands of clusters of per-row resampling.
    """
    draws = rng.integers(0, n, (rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    clusters: np.ndarray,
    strata: np.ndarray | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    seed_method: str = "t",
) -> BootstrapResult:
    """Paired cluster bootstrap of ``statistic(a) - statistic(b)``.

    Args:
        a: per-query scores of system A, shape ``(n_queries,)`` or ``(n_seeds, n_queries)``.
        b: system B on the same queries in the same order; its seed count may differ.
        clusters: ``(n_queries,)`` ids; queries with equal ids are drawn together
            (the question id: all its language versions and X→Y pairs move as one).
        strata: ``(n_queries,)`` language or pair of each query; the statistic is the
            mean over strata of stratum means. ``None``: the plain mean.
        n_resamples: bootstrap replicates.
        confidence: level of the percentile interval.
        seed: seed of the resampling RNG.
        seed_method: ``t``: the seed component of the module docstring. ``resample``: each replicate
            draws each system's seeds with replacement instead (under-covers with few seeds; kept
            as the contender the coverage test shows failing).

    Returns:
        The difference, its interval and a two-sided p-value.

    Raises:
        ValueError: ``clusters``/``strata`` of the wrong length, ``a`` and ``b``
            over different queries, NaN scores, fewer than 2 clusters, or a bad
            ``n_resamples``/``confidence``; the message names the argument.
    """
    A, B = _as_seeds(a, "a"), _as_seeds(b, "b")
    n = A.shape[1]
    if B.shape[1] != n:
        raise ValueError(f"b must score the same queries as a: got {B.shape[1]} queries, a has {n}")
    cl = _codes(clusters, n, "clusters")
    assert cl is not None
    c_codes, n_clusters = cl
    if n_clusters < 2:
        raise ValueError(f"clusters: the bootstrap needs at least 2 clusters, got {n_clusters}")
    st = _codes(strata, n, "strata")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if seed_method not in ("t", "resample"):
        raise ValueError(f"seed_method must be 't' or 'resample', got {seed_method!r}")
    n_resamples = int(n_resamples)

    diff = float(_statistic(A, st).mean() - _statistic(B, st).mean())
    s_codes, n_strata = st if st is not None else (np.zeros(n, np.int64), 1)
    # Sums per (cluster, stratum) once: a replicate is then a reweighting of clusters,
    # (replicates x clusters) @ (clusters x strata), whatever the number of rows.
    cell = c_codes * n_strata + s_codes
    counts = np.bincount(cell, minlength=n_clusters * n_strata).reshape(n_clusters, n_strata).astype(np.float64)
    sums_a = np.stack([np.bincount(cell, weights=x, minlength=n_clusters * n_strata) for x in A]).reshape(
        A.shape[0], n_clusters, n_strata)
    sums_b = np.stack([np.bincount(cell, weights=x, minlength=n_clusters * n_strata) for x in B]).reshape(
        B.shape[0], n_clusters, n_strata)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_resamples, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(n_clusters * n_strata, 1))
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        # How often each cluster was drawn: the same draw for both systems (paired).
        w = _draw_counts(rng, r, n_clusters).astype(np.float64)
        if seed_method == "resample":
            # Each system's seeds drawn with replacement: the replicate averages the drawn seeds.
            wa, wb = _draw_counts(rng, r, A.shape[0]), _draw_counts(rng, r, B.shape[0])
            num_a = sum((wa[:, [k]] / A.shape[0]) * (w @ sums_a[k]) for k in range(A.shape[0]))
            num_b = sum((wb[:, [k]] / B.shape[0]) * (w @ sums_b[k]) for k in range(B.shape[0]))
        else:
            num_a, num_b = w @ sums_a.mean(axis=0), w @ sums_b.mean(axis=0)
        den = w @ counts  # (r, strata)
        with np.errstate(invalid="ignore", divide="ignore"):
            # A stratum that drew no cluster in this replicate drops out of its mean.
            reps[start : start + r] = np.nanmean(np.where(den > 0, (num_a - num_b) / den, np.nan), axis=1)
    var_questions = float(reps.var(ddof=1)) if n_resamples > 1 else 0.0
    var_a, var_b = _seed_variance(A, st, c_codes, n_clusters), _seed_variance(B, st, c_codes, n_clusters)
    terms = [(v, k) for v, k in ((var_a, A.shape[0]), (var_b, B.shape[0])) if k > 1]
    v_seeds = sum(v / k for v, k in terms)
    seed_df = None
    if seed_method == "t" and v_seeds > 0:
        # Welch-Satterthwaite over both components (the question component's degrees of freedom
        # are in the hundreds: taken as infinite). Each replicate's deviation from the estimate,
        # a normal seed draw added, is divided by sqrt(chi2_df / df): a t_df scale mixture, so the
        # interval is t_df wide around the total variance, and keeps the question draw's shape.
        seed_df = (var_questions + v_seeds) ** 2 / sum((v / k) ** 2 / (k - 1) for v, k in terms if v > 0)
        noise = reps - diff + np.sqrt(v_seeds) * rng.standard_normal(n_resamples)
        reps = diff + noise * np.sqrt(seed_df / rng.chisquare(seed_df, n_resamples))
    alpha = 1.0 - confidence
    low, high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min(np.count_nonzero(reps <= 0.0), np.count_nonzero(reps >= 0.0)) / n_resamples
    return BootstrapResult(
        diff=diff,
        low=float(low),
        high=float(high),
        p_value=float(min(1.0, max(2.0 * tail, 1.0 / n_resamples))),
        n_clusters=n_clusters,
        n_queries=n,
        n_resamples=n_resamples,
        confidence=float(confidence),
        replicates=reps,
        var_questions=var_questions,
        seed_var_a=var_a,
        seed_var_b=var_b,
        n_seeds_a=int(A.shape[0]),
        n_seeds_b=int(B.shape[0]),
        seed_df=None if seed_df is None else float(seed_df),
        seed_method=seed_method,
    )


def _seed_variance(scores: np.ndarray, strata: tuple[np.ndarray, int] | None, clusters: np.ndarray,
                   n_clusters: int) -> float:
    """A system's seed variance: the sample variance (n-1) of its statistic across seeds, less
    the question x seed interaction (floored at 0); 0 with one seed.

    The statistic is linear in the rows: each row weighs 1/(strata x rows in its stratum)
    (1/rows without strata). So seed k's statistic is the sum over clusters i of parts
    ``g[k, i]``, and ``g = m + a_i + b_k + ab_ik``. Across seeds the statistic varies by
    ``var(b) + Q var(ab)``; the question component, taken on the seeds' mean, already holds
    ``Q var(ab) / n``. The two-way residual mean square estimates ``var(ab)``.
    """
    n_seeds = scores.shape[0]
    if n_seeds < 2:
        return 0.0
    if strata is None:
        row_w = np.full(scores.shape[1], 1.0 / scores.shape[1])
    else:
        codes, k = strata
        row_w = 1.0 / (k * np.bincount(codes, minlength=k)[codes])
    g = np.stack([np.bincount(clusters, weights=row_w * x, minlength=n_clusters) for x in scores])
    total = float(g.sum(axis=1).var(ddof=1))
    resid = g - g.mean(axis=0, keepdims=True) - g.mean(axis=1, keepdims=True) + g.mean()
    interaction = float((resid**2).sum() / ((n_clusters - 1) * (n_seeds - 1)))
    return max(total - n_clusters * interaction, 0.0)
