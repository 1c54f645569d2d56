"""Batch strategies: mixing ratio, language constraints, determinism, worker agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hbt.config import BatchingConfig, XQUAD_R_LANGUAGES
from hbt.data.strategies import plan_step

LANGS = list(XQUAD_R_LANGUAGES)


def _binomial_interval(n: int, p: float, z: float = 3.2905) -> tuple[float, float]:
    """Normal-approximation 99.9% interval for the fraction of successes."""
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def test_hybrid_mono_fraction_and_batch_invariants():
    cfg = BatchingConfig(strategy="hybrid", alpha=0.3, global_batch_size=32, seed=7)
    steps = 2500
    plans = [plan_step(cfg, LANGS, epoch=s // 100, step=s) for s in range(steps)]
    mono = sum(p.kind == "mono" for p in plans)
    lo, hi = _binomial_interval(steps, 0.3)
    assert lo <= mono / steps <= hi, (mono / steps, lo, hi)
    for p in plans:
        assert p.kind in ("mono", "cross")
        assert len(p.q_lang) == len(p.p_lang) == 32
        if p.kind == "mono":
            assert len(set(p.q_lang.tolist()) | set(p.p_lang.tolist())) == 1
        else:
            assert np.all(p.q_lang != p.p_lang)


def test_same_seed_same_sequence_and_different_seed_differs():
    cfg = BatchingConfig(strategy="hybrid", alpha=0.5, global_batch_size=16, seed=3)
    a = [plan_step(cfg, LANGS, 0, s) for s in range(200)]
    b = [plan_step(cfg, LANGS, 0, s) for s in range(200)]
    assert all(x.kind == y.kind and np.array_equal(x.q_lang, y.q_lang) and np.array_equal(x.p_lang, y.p_lang)
               for x, y in zip(a, b))
    c = [plan_step(cfg.model_copy(update={"seed": 4}), LANGS, 0, s) for s in range(200)]
    assert any(x.kind != y.kind or not np.array_equal(x.q_lang, y.q_lang) for x, y in zip(a, c))


def test_two_workers_see_consistent_batch_types():
    """Each worker computes the plan alone; their slices share kind and (mono) language."""
    cfg = BatchingConfig(strategy="hybrid", alpha=0.5, global_batch_size=16, seed=11)
    for step in range(300):
        # Two workers draw independently, as two processes would.
        w0 = plan_step(cfg, LANGS, 0, step).slice(0, 2)
        w1 = plan_step(cfg, LANGS, 0, step).slice(1, 2)
        assert w0.kind == w1.kind
        assert len(w0.q_lang) == len(w1.q_lang) == 8
        if w0.kind == "mono":
            assert set(w0.q_lang.tolist()) == set(w1.q_lang.tolist()) and len(set(w0.q_lang.tolist())) == 1


@pytest.mark.parametrize("strategy", ["mono", "mixed_mono", "cross", "single"])
def test_each_strategy_respects_its_definition(strategy):
    cfg = BatchingConfig(strategy=strategy, global_batch_size=64, seed=1, single_language="de")
    kinds = set()
    for step in range(100):
        p = plan_step(cfg, LANGS, 0, step)
        kinds.add(p.kind)
        if strategy in ("mono", "single"):
            assert len(set(p.q_lang.tolist())) == 1 and np.array_equal(p.q_lang, p.p_lang)
        if strategy == "single":
            assert LANGS[p.q_lang[0]] == "de"
        if strategy == "mixed_mono":
            assert np.array_equal(p.q_lang, p.p_lang)
        if strategy == "cross":
            assert np.all(p.q_lang != p.p_lang)
    assert kinds == {strategy}
    if strategy == "mixed_mono":
        assert len(set(plan_step(cfg, LANGS, 0, 0).q_lang.tolist())) > 1


def test_cross_per_batch_pair_mode_uses_one_language_pair():
    cfg = BatchingConfig(strategy="cross", cross_pair_mode="per_batch", global_batch_size=16)
    for step in range(50):
        p = plan_step(cfg, LANGS, 0, step)
        assert len(set(p.q_lang.tolist())) == 1 and len(set(p.p_lang.tolist())) == 1
        assert p.q_lang[0] != p.p_lang[0]


def test_language_weights_shift_the_histogram():
    cfg = BatchingConfig(strategy="mixed_mono", global_batch_size=64)
    weights = {"en": 8.0, "de": 1.0, "zh": 1.0}
    counts = np.zeros(3)
    for step in range(200):
        p = plan_step(cfg, ["en", "de", "zh"], 0, step, weights)
        counts += np.bincount(p.q_lang, minlength=3)
    frac = counts / counts.sum()
    assert abs(frac[0] - 0.8) < 0.02 and abs(frac[1] - 0.1) < 0.02
