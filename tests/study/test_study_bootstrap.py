"""The paired cluster bootstrap: coverage under within-question correlation, the exact statistic, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hbt.study.bootstrap import paired_bootstrap


def _correlated(rng: np.random.Generator, questions: int, strata: int, rho: float) -> tuple[np.ndarray, ...]:
    """Two systems with true difference 0; rows of one question correlate by ``rho`` (per system)."""
    def system() -> np.ndarray:
        shared = rng.standard_normal(questions)[:, None]
        return (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((questions, strata))).ravel()

    clusters = np.repeat(np.arange(questions), strata)
    stratum = np.tile(np.arange(strata), questions)
    return system(), system(), clusters, stratum


def _coverage(strata: int, per_row: bool, datasets: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(datasets):
        a, b, clusters, stratum = _correlated(rng, 150, strata, 0.5)
        res = paired_bootstrap(a, b, clusters=np.arange(a.size) if per_row else clusters, strata=stratum,
                               n_resamples=1000, seed=i)
        hits += res.low <= 0.0 <= res.high
    return hits / datasets


def test_question_level_intervals_cover_at_the_nominal_rate_with_7_languages():
    """150 questions x 7 languages, within-question correlation 0.5, true difference 0, 300 data sets."""
    assert _coverage(7, per_row=False, datasets=300, seed=1) >= 0.93


def test_per_row_resampling_undercovers_so_the_test_can_fail():
    assert _coverage(7, per_row=True, datasets=300, seed=1) < 0.85


@pytest.mark.slow
def test_coverage_with_42_ordered_pairs():
    assert _coverage(42, per_row=False, datasets=300, seed=2) >= 0.93
    assert _coverage(42, per_row=True, datasets=300, seed=2) < 0.85


def test_diff_is_the_difference_of_macro_means_with_unequal_strata():
    """MLQA-R shapes: 150 English queries, 56-74 in the others; the columns are macro means over languages."""
    rng = np.random.default_rng(0)
    sizes = {"en": 150, "ar": 56, "de": 61, "es": 74, "hi": 60, "vi": 70, "zh": 65}
    stratum = np.concatenate([[lang] * n for lang, n in sizes.items()])
    clusters = np.concatenate([rng.choice(150, n, replace=False) for n in sizes.values()])
    a = rng.uniform(0, 1, stratum.size)
    b = rng.uniform(0, 1, stratum.size)
    res = paired_bootstrap(a, b, clusters=clusters, strata=stratum, n_resamples=200)
    macro = lambda x: np.mean([x[stratum == s].mean() for s in sizes])  # noqa: E731
    assert res.diff == pytest.approx(macro(a) - macro(b), abs=1e-12)
    assert res.diff != pytest.approx(a.mean() - b.mean(), abs=1e-4)  # the micro mean would differ
    assert res.low <= res.diff <= res.high


def test_seeds_average_and_may_differ_in_count():
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(40), 3)
    # Each seed shifts all of its scores (a seed effect), on top of per-row noise.
    a = rng.uniform(0, 1, (3, 120)) + rng.normal(0, 0.1, (3, 1))
    b = rng.uniform(0, 1, (2, 120)) + rng.normal(0, 0.1, (2, 1))
    res = paired_bootstrap(a, b, clusters=clusters, n_resamples=300)
    assert res.diff == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert (res.n_seeds_a, res.n_seeds_b) == (3, 2) and res.seed_df is not None
    # Seed variation widens the interval over a one-seed comparison of the seed means.
    one = paired_bootstrap(a.mean(0), b.mean(0), clusters=clusters, n_resamples=300)
    assert (res.high - res.low) > (one.high - one.low)


def test_same_seed_same_interval():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    clusters = np.repeat(np.arange(25), 2)
    r1 = paired_bootstrap(a, b, clusters=clusters, seed=7, n_resamples=500)
    r2 = paired_bootstrap(a, b, clusters=clusters, seed=7, n_resamples=500)
    assert (r1.low, r1.high, r1.p_value) == (r2.low, r2.high, r2.p_value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clusters": np.arange(9)}, "clusters must have shape"),
        ({"clusters": np.arange(10), "strata": np.arange(3)}, "strata must have shape"),
        ({"clusters": np.zeros(10)}, "clusters: the bootstrap needs at least 2 clusters"),
    ],
)
def test_bad_labels_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(np.ones(10), np.zeros(10), **kwargs)


def test_bad_scores_name_the_argument():
    c = np.arange(10)
    with pytest.raises(ValueError, match="b must score the same queries"):
        paired_bootstrap(np.ones(10), np.ones(9), clusters=c)
    nan = np.ones(10)
    nan[4] = np.nan
    with pytest.raises(ValueError, match="a has 1 non-finite"):
        paired_bootstrap(nan, np.ones(10), clusters=c)
    with pytest.raises(ValueError, match="b has 1 non-finite"):
        paired_bootstrap(np.ones(10), nan, clusters=c)


# ----------------------------------------------------------------------------- seeds


def _seeded_systems(rng: np.random.Generator, questions: int, strata: int, seeds: int) -> tuple[np.ndarray, ...]:
    """Two systems with true difference 0, each trained with ``seeds`` seeds.

    A row (question i, stratum j) of seed k scores ``u_i + v_ik + e_ijk + d_k``: a question effect
    shared by every seed, a question x seed effect, row noise and a seed effect. The seed effect's
    variance makes seeds half of the difference's variance, as in the study's MLQA-R comparisons.
    """
    su, sv, se = 0.5, 0.1, 0.4
    question_part = su / questions + sv / (seeds * questions) + se / (seeds * questions * strata)
    sd = seeds * question_part  # 2 sd/seeds == 2 question_part: seeds are 50 % of var(diff)

    def system() -> np.ndarray:
        u = np.sqrt(su) * rng.standard_normal((1, questions, 1))
        v = np.sqrt(sv) * rng.standard_normal((seeds, questions, 1))
        e = np.sqrt(se) * rng.standard_normal((seeds, questions, strata))
        d = np.sqrt(sd) * rng.standard_normal((seeds, 1, 1))
        return (u + v + e + d).reshape(seeds, -1)

    clusters = np.repeat(np.arange(questions), strata)
    stratum = np.tile(np.arange(strata), questions)
    return system(), system(), clusters, stratum


def _seed_coverage(method: str, datasets: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(datasets):
        a, b, clusters, stratum = _seeded_systems(rng, 150, 7, 3)
        res = paired_bootstrap(a, b, clusters=clusters, strata=stratum, n_resamples=1000, seed=i, seed_method=method)
        hits += res.low <= 0.0 <= res.high
    return hits / datasets


@pytest.mark.slow
def test_with_3_seeds_carrying_half_the_variance_the_seed_t_component_covers_at_the_nominal_rate():
    """1 000 data sets (coverage's standard error about 0.007): nominal 0.95 +- 0.02. Drawing the
    3 seeds with replacement (the contender) keeps 2/3 of their variance and normal tails, and misses."""
    assert 0.93 <= _seed_coverage("t", 1000, seed=11) <= 0.97
    assert _seed_coverage("resample", 1000, seed=11) < 0.93


def test_seed_components_are_estimated_without_the_question_by_seed_interaction():
    """With no seed effect at all, the seeds' scatter is question x seed interaction only: the seed
    variance estimate is near 0, not the interaction counted a second time."""
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(200), 4)
    base = rng.standard_normal(800)
    a = base + rng.standard_normal((5, 800))  # per-seed row noise, no seed shift
    b = base + 0.1 + rng.standard_normal((5, 800))
    res = paired_bootstrap(a, b, clusters=clusters, n_resamples=500)
    naive = a.mean(axis=1).var(ddof=1) / 5 + b.mean(axis=1).var(ddof=1) / 5
    assert res.var_seeds < 0.3 * naive
    # A real seed shift is found: 0.05 sd per seed dwarfs the interaction's 1/sqrt(800).
    shifted = a + 0.2 * rng.standard_normal((5, 1))
    res2 = paired_bootstrap(shifted, b, clusters=clusters, n_resamples=500)
    assert res2.seed_var_a == pytest.approx(shifted.mean(axis=1).var(ddof=1), rel=0.6)
    assert res2.seed_df is not None and 2.0 <= res2.seed_df


def test_one_seed_systems_add_no_seed_component():
    rng = np.random.default_rng(6)
    clusters = np.arange(60)
    res = paired_bootstrap(rng.uniform(size=60), rng.uniform(size=60), clusters=clusters, n_resamples=300)
    assert res.var_seeds == 0.0 and res.seed_df is None and res.n_seeds_a == res.n_seeds_b == 1


def test_a_lower_is_better_result_is_oriented_so_better_points_up():
    rng = np.random.default_rng(7)
    clusters = np.arange(80)
    res = paired_bootstrap(rng.uniform(size=80) - 0.3, rng.uniform(size=80), clusters=clusters, n_resamples=400)
    flipped = res.oriented(higher_is_better=False)
    assert flipped.diff == -res.diff and (flipped.low, flipped.high) == (-res.high, -res.low)
    assert flipped.p_at_most(0.0) == res.p_at_least(0.0)
    assert res.oriented(higher_is_better=True) is res
