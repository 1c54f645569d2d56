"""The paired bootstrap on synthetic per-query scores with a known answer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hbt.study.bootstrap import BootstrapResult, paired_bootstrap


def _scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, n)


@pytest.mark.parametrize("shift", [0.05, -0.05])
def test_recovers_a_known_difference(shift: float) -> None:
    a = _scores(2000, 0)
    noise = np.random.default_rng(1).normal(0.0, 0.1, a.size)
    b = a + shift + noise
    res = paired_bootstrap(b, a, n_samples=1000, seed=3)
    assert res.ci_low <= shift <= res.ci_high
    assert res.diff == pytest.approx(b.mean() - a.mean())
    assert res.mean_a == pytest.approx(b.mean()) and res.mean_b == pytest.approx(a.mean())
    assert res.verdict() == ("improves" if shift > 0 else "degrades")
    # For a lower-is-better metric the same interval means the opposite.
    assert res.verdict(higher_is_better=False) == ("degrades" if shift > 0 else "improves")
    assert res.p_value <= 0.01
    assert res.n_queries == 2000


def test_no_difference_between_paired_noisy_systems() -> None:
    # Two systems that share the per-query difficulty and differ only by
    # independent noise of the same distribution.
    base = _scores(1500, 0)
    rng = np.random.default_rng(7)
    a = base + rng.normal(0.0, 0.05, base.size)
    b = base + rng.normal(0.0, 0.05, base.size)
    res = paired_bootstrap(a, b, seed=0)
    assert res.ci_low < 0.0 < res.ci_high
    assert res.verdict() == "no significant difference"
    assert res.p_value > 0.05


def test_identical_systems_have_a_zero_width_interval() -> None:
    a = _scores(100, 0)
    res = paired_bootstrap(a, a.copy())
    assert res.diff == 0.0 and res.ci_low == 0.0 and res.ci_high == 0.0
    assert res.p_value == 1.0
    assert res.verdict() == "no significant difference"


def test_reproducible_for_a_seed() -> None:
    a, b = _scores(300, 0), _scores(300, 1)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)
    assert paired_bootstrap(a, b, seed=5).ci_low != paired_bootstrap(a, b, seed=6).ci_low


def test_ci_matches_a_naive_loop() -> None:
    a, b = _scores(50, 0), _scores(50, 1)
    res = paired_bootstrap(a, b, n_samples=400, seed=11)
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 50, size=(400, 50))
    naive = np.array([a[i].mean() - b[i].mean() for i in idx])
    lo, hi = np.quantile(naive, [0.025, 0.975])
    assert res.ci_low == pytest.approx(lo) and res.ci_high == pytest.approx(hi)


def test_large_input_is_fast() -> None:
    a, b = _scores(10_000, 0), _scores(10_000, 1)
    t0 = time.perf_counter()
    res = paired_bootstrap(a, b, n_samples=1000)
    assert time.perf_counter() - t0 < 3.0
    assert isinstance(res, BootstrapResult) and res.n_samples == 1000


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.ones(3), np.ones(4), "same queries"),
        (np.array([]), np.array([]), "empty"),
        (np.array([1.0, np.nan]), np.ones(2), "non-finite"),
        (np.ones(2), np.array([np.inf, 1.0]), "b has 1 non-finite"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
    ],
)
def test_rejects_bad_input(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="n_samples"):
        paired_bootstrap(np.ones(3), np.ones(3), n_samples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.ones(3), np.ones(3), confidence=1.0)
