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


@pytest.mark.parametrize("schedule", ["balanced", "random"])
def test_hybrid_mono_fraction_and_batch_invariants(schedule):
    cfg = BatchingConfig(strategy="hybrid", alpha=0.3, global_batch_size=32, seed=7, language_schedule=schedule)
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


@pytest.mark.parametrize("schedule", ["balanced", "random"])
def test_same_seed_same_sequence_and_different_seed_differs(schedule):
    cfg = BatchingConfig(strategy="hybrid", alpha=0.5, global_batch_size=16, seed=3, language_schedule=schedule)
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


@pytest.mark.parametrize("schedule", ["balanced", "random"])
@pytest.mark.parametrize("strategy", ["mono", "mixed_mono", "cross", "single"])
def test_each_strategy_respects_its_definition(strategy, schedule):
    cfg = BatchingConfig(strategy=strategy, global_batch_size=64, seed=1, single_language="de",
                         language_schedule=schedule)
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


@pytest.mark.parametrize("schedule", ["balanced", "random"])
def test_cross_per_batch_pair_mode_uses_one_language_pair(schedule):
    cfg = BatchingConfig(strategy="cross", cross_pair_mode="per_batch", global_batch_size=16,
                         language_schedule=schedule)
    for step in range(50):
        p = plan_step(cfg, LANGS, 0, step)
        assert len(set(p.q_lang.tolist())) == 1 and len(set(p.p_lang.tolist())) == 1
        assert p.q_lang[0] != p.p_lang[0]


@pytest.mark.parametrize("schedule", ["balanced", "random"])
def test_language_weights_shift_the_histogram(schedule):
    cfg = BatchingConfig(strategy="mixed_mono", global_batch_size=64, language_schedule=schedule)
    weights = {"en": 8.0, "de": 1.0, "zh": 1.0}
    counts = np.zeros(3)
    for step in range(200):
        p = plan_step(cfg, ["en", "de", "zh"], 0, step, weights)
        counts += np.bincount(p.q_lang, minlength=3)
    frac = counts / counts.sum()
    assert abs(frac[0] - 0.8) < 0.02 and abs(frac[1] - 0.1) < 0.02


# ----------------------------------------------------------------------------- the balanced schedule

STUDY_LANGS = ["ar", "de", "el", "en", "es", "hi", "ru"]


def _counts(values, k: int) -> np.ndarray:
    return np.bincount(np.asarray(values, dtype=np.int64), minlength=k)


def test_balanced_hybrid_has_exactly_alpha_mono_steps_per_block_and_even_languages():
    """The study's shape (7 languages, 40 steps): the random schedule drew 23 mono steps,
    9 of them in one language; the balanced one draws 20, and no language more than once over another."""
    for seed in range(5):
        cfg = BatchingConfig(strategy="hybrid", alpha=0.5, global_batch_size=32, seed=seed)
        plans = [plan_step(cfg, STUDY_LANGS, 0, s) for s in range(40)]
        for block in (plans[:20], plans[20:]):
            assert sum(p.kind == "mono" for p in block) == 10
        mono = _counts([p.q_lang[0] for p in plans if p.kind == "mono"], 7)
        assert mono.max() - mono.min() <= 1, mono
        cross = np.zeros((7, 7), dtype=np.int64)
        for p in plans:
            if p.kind == "cross":
                np.add.at(cross, (p.q_lang, p.p_lang), 1)
        off = cross[~np.eye(7, dtype=bool)]
        assert off.max() - off.min() <= 1 and np.trace(cross) == 0, cross


def test_balanced_alpha_that_does_not_divide_the_block_does_not_drift():
    cfg = BatchingConfig(strategy="hybrid", alpha=0.3, global_batch_size=8, seed=2)
    kinds = [plan_step(cfg, STUDY_LANGS, 0, s).kind == "mono" for s in range(1000)]
    for end in range(20, 1001, 20):
        assert sum(kinds[:end]) == int(np.floor(end * 0.3 + 1e-9))


@pytest.mark.parametrize("strategy, mode", [("mono", "per_pair"), ("cross", "per_batch")])
def test_balanced_one_language_per_step_strategies_cover_every_language_each_round(strategy, mode):
    cfg = BatchingConfig(strategy=strategy, cross_pair_mode=mode, global_batch_size=4, seed=5)
    k = 7 if strategy == "mono" else 42
    plans = [plan_step(cfg, STUDY_LANGS, 0, s) for s in range(3 * k)]
    ids = [p.q_lang[0] * 7 + p.p_lang[0] if strategy == "cross" else p.q_lang[0] for p in plans]
    for r in range(3):  # every round holds each language (ordered pair) once, in a seeded order
        assert sorted(set(ids[r * k:(r + 1) * k])) == sorted(set(ids)) and len(set(ids[r * k:(r + 1) * k])) == k
    assert ids[:k] != ids[k:2 * k]


def test_balanced_mixed_batches_deal_languages_across_steps():
    cfg = BatchingConfig(strategy="mixed_mono", global_batch_size=10, seed=1)
    q = np.concatenate([plan_step(cfg, STUDY_LANGS, 0, s).q_lang for s in range(7)])  # 70 draws: 10 rounds
    assert _counts(q, 7).tolist() == [10] * 7


def test_balanced_weights_are_followed_to_within_a_round():
    cfg = BatchingConfig(strategy="mixed_mono", global_batch_size=30, seed=0)
    q = np.concatenate([plan_step(cfg, ["en", "de", "zh"], 0, s, {"en": 8.0, "de": 1.0, "zh": 1.0}).q_lang
                        for s in range(10)])  # 300 draws: 10 rounds of 30
    assert _counts(q, 3).tolist() == [240, 30, 30]


def test_balanced_plans_depend_on_the_step_alone():
    """A resumed (or elastic) run asks for step 37 first: it gets what a run from step 0 got."""
    cfg = BatchingConfig(strategy="hybrid", alpha=0.5, global_batch_size=16, seed=9)
    forward = [plan_step(cfg, STUDY_LANGS, 0, s) for s in range(60)]
    for s in (59, 37, 3, 20, 0):
        p = plan_step(cfg, STUDY_LANGS, 0, s)
        assert p.kind == forward[s].kind and np.array_equal(p.q_lang, forward[s].q_lang)
        assert np.array_equal(p.p_lang, forward[s].p_lang)
