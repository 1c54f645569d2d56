"""Non-inferiority verdicts, Holm, and the one-sentence answer, on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from hbt.study.bootstrap import BootstrapResult
from hbt.study.verdicts import answer, holm, noninferiority_verdicts, superiority_verdict


def _result(replicates) -> BootstrapResult:
    r = np.asarray(replicates, dtype=np.float64)
    low, high = np.quantile(r, [0.025, 0.975])
    return BootstrapResult(float(r.mean()), float(low), float(high), 1.0, 100, 100, r.size, 0.95, r)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_the_four_verdicts():
    m = 0.01
    better = _result(np.linspace(0.001, 0.02, 1000))  # all replicates above 0
    noninf = _result(np.linspace(-0.009, 0.01, 1000))  # above -m, straddles 0
    inferior = _result(np.linspace(-0.05, -0.02, 1000))  # below -m
    unclear = _result(np.linspace(-0.03, 0.01, 1000))  # straddles -m
    got = [v["verdict"] for v in noninferiority_verdicts([better, noninf, inferior, unclear], m, correct=False)]
    assert got == ["better", "non-inferior", "inferior", "inconclusive"]


def test_a_comparison_significant_alone_is_not_after_holm():
    m = 0.01
    # 2% of the replicates lie at or below -m: p = 0.02 < 0.025 alone.
    r = np.concatenate([np.full(20, -0.02), np.full(980, 0.0)])
    family = [_result(r)] * 3
    alone = noninferiority_verdicts(family[:1], m)
    assert alone[0]["verdict"] == "non-inferior" and alone[0]["p_noninferior"] == pytest.approx(0.02)
    corrected = noninferiority_verdicts(family, m)
    assert all(v["verdict"] == "inconclusive" for v in corrected)
    assert corrected[0]["p_noninferior_holm"] == pytest.approx(0.06)


def test_a_verdict_within_monte_carlo_error_of_its_threshold_is_marked():
    m = 0.01
    # p = 0.02 from 1000 replicates: its Monte Carlo standard error is 0.0044, so 2 of them
    # reach past the 0.025 level; p = 0.002 does not come near it.
    near = _result(np.concatenate([np.full(20, -0.02), np.full(980, 0.0)]))
    far = _result(np.concatenate([np.full(2, -0.02), np.full(998, 0.0)]))
    clear = _result(np.linspace(0.001, 0.02, 1000))
    got = noninferiority_verdicts([near, far, clear], m, correct=False)
    assert [v["verdict"] for v in got] == ["non-inferior", "non-inferior", "better"]
    assert [v["mc_stable"] for v in got] == [False, True, True]
    # The same p-value from 100 000 replicates is 0.0004 from its own value: stable.
    many = _result(np.concatenate([np.full(2000, -0.02), np.full(98000, 0.0)]))
    assert noninferiority_verdicts([many], m, correct=False)[0]["mc_stable"] is True


def test_superiority():
    assert superiority_verdict(_result(np.linspace(0.01, 0.02, 100))) == "better"
    assert superiority_verdict(_result(np.linspace(-0.02, -0.01, 100))) == "worse"
    assert superiority_verdict(_result(np.linspace(-0.01, 0.01, 100))) == "inconclusive"


def test_the_answer_follows_the_verdicts_only():
    ok = [("mlqa_r/monolingual/mAP", "X-Y", "non-inferior"), ("tatoeba/xx-eng/acc@1", "X-Y", "better")]
    assert answer(ok, 0.01).startswith("No: HBT is non-inferior (margin 0.01")
    bad = ok + [("tatoeba/eng-xx/acc@1", "zero-shot", "inferior")]
    assert answer(bad, 0.01).startswith("Yes: HBT hurts") and "tatoeba/eng-xx/acc@1 vs zero-shot" in answer(bad, 0.01)
    open_ = ok + [("mlqa_r/multilingual/mAP", "X-X-mono", "inconclusive")]
    assert answer(open_, 0.01).startswith("Not settled at margin 0.01") and "1 are inconclusive" in answer(open_, 0.01)
