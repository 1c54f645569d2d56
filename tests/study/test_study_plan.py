"""The study's planner: variance components fitted on simulated studies with known variances, projections."""

from __future__ import annotations

import numpy as np
import pytest

from hbt.study.bootstrap import paired_bootstrap
from hbt.study.plan import design_plan, project


def _study(rng, questions: int, seeds: int, su: float, sd: float, shift: float = 0.0):
    """Two systems: question effects shared by their seeds, per-question noise, a seed shift of variance sd."""
    def system(mu: float) -> np.ndarray:
        u = np.sqrt(su) * rng.standard_normal((1, questions))
        noise = 0.3 * rng.standard_normal((seeds, questions))
        return mu + u + noise + np.sqrt(sd) * rng.standard_normal((seeds, 1))
    return system(shift), system(0.0)


def test_the_components_fitted_on_simulated_studies_recover_the_known_variances():
    """Question variance (su + 0.09/seeds) x 2 / Q and seed variance sd per system, over 40 simulated studies."""
    rng = np.random.default_rng(0)
    q, s, su, sd = 200, 5, 0.5, 0.004
    vq, va = [], []
    for i in range(40):
        a, b = _study(rng, q, s, su, sd)
        res = paired_bootstrap(a, b, clusters=np.arange(q), n_resamples=400, seed=i)
        vq.append(res.var_questions)
        va.append(res.seed_var_a)
    assert np.mean(vq) == pytest.approx(2 * (su + 0.09 / s) / q, rel=0.1)
    assert np.mean(va) == pytest.approx(sd, rel=0.25)


def _entry(diff, vq, sa, sb, n_a=3, n_b=3, q=150, key="mlqa_r/monolingual/mAP", comparator="x_y", hib=True):
    return {"key": key, "comparator": comparator, "diff": diff, "var_questions": vq, "seed_var_a": sa,
            "seed_var_b": sb, "n_seeds_a": n_a, "n_seeds_b": n_b, "n_clusters": q, "higher_is_better": hib,
            "verdict": "inconclusive"}


def test_projection_scales_questions_and_seeds_and_keeps_zero_shot_seedless():
    e = _entry(0.0, 1e-4, 3e-4, 3e-4)
    now = project(e, 150, 3)
    assert now["se"] == pytest.approx(np.sqrt(1e-4 + 2e-4))
    more = project(e, 600, 12)
    assert more["se"] == pytest.approx(np.sqrt(1e-4 / 4 + 2 * 3e-4 / 12))
    assert more["df"] > now["df"]
    zs = project(_entry(0.0, 1e-4, 3e-4, 0.0, n_b=1, comparator="zero_shot"), 150, 3)
    assert zs["se"] == pytest.approx(np.sqrt(1e-4 + 1e-4))


def test_plan_finds_the_seed_count_that_settles_an_open_comparison():
    # diff 0.005 above a 0.01 margin: open at 3 seeds (se 0.02); non-inferior once 0.015 / se passes
    # t's 97.5% point, se <= ~0.0073: about 23 seeds per strategy.
    report = {"endpoints": {"margin": 0.01, "domain_shift": [_entry(0.005, 1e-6, 6e-4, 6e-4)], "fine_tuning": []},
              "seeds": {"hbt": ["0", "1", "2"], "x_y": ["0", "1", "2"]}, "strategies": ["x_y", "hbt"],
              "bootstrap": {"confidence": 0.95}}
    timings = {"train/hbt-s0": 100.0, "eval/hbt-s0": 50.0}
    plan = design_plan(report, timings, seeds=[3, 40])
    rows = {r["seeds"]: r for r in plan["designs"]}
    assert rows[3]["domain_shift"]["inconclusive"] == 1 and rows[40]["domain_shift"]["non-inferior"] == 1
    best = plan["settles_all"]
    assert best is not None and 20 < best["seeds"] <= 26
    # Hours: 2 strategies x seeds x (train + eval) + the zero-shot eval.
    assert best["hours"] == pytest.approx((2 * best["seeds"] * 150 + 50) / 3600)
    # An estimate on the margin settles at no size.
    report["endpoints"]["domain_shift"] = [_entry(-0.01, 1e-6, 6e-4, 6e-4)]
    assert design_plan(report, timings)["settles_all"] is None


def test_a_lower_is_better_endpoint_is_projected_in_its_direction():
    report = {"endpoints": {"margin": 0.01, "domain_shift": [_entry(-0.05, 1e-6, 1e-6, 1e-6, hib=False)],
                            "fine_tuning": []},
              "seeds": {"hbt": ["0", "1", "2"]}, "strategies": ["x_y", "hbt"], "bootstrap": {"confidence": 0.95}}
    assert design_plan(report)["designs"][0]["domain_shift"]["better"] == 1
