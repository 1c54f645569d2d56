"""The study report on synthetic evaluation results with known answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hbt.study.report import build_report, compute_report, per_query_key, summary_table

LANGS = ["ar", "de", "en"]
METRICS = [
    "xquad_r/monolingual/mAP",
    "xquad_r/multilingual/mAP",
    "xquad_r/bias/own_language_top1",
    "tatoeba/acc@1",
]


@dataclass
class FakeResult:
    """Satisfies EvalResultLike."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    matrices: dict[str, dict[str, Any]] = field(default_factory=dict)


def _result(shift: float, seed: int, n: int = 400, bias: float = 0.5, mono_shift: float = 0.0) -> FakeResult:
    """Per-query AP = a shared difficulty + shift + small seed noise."""
    difficulty = np.random.default_rng(0).uniform(0.2, 0.8, n)
    noise = np.random.default_rng(100 + seed).normal(0.0, 0.02, n)
    mono = difficulty + mono_shift + noise  # by default the same for every strategy
    multi = difficulty + shift + noise
    acc = (np.random.default_rng(200 + seed).uniform(0, 1, 300) < 0.7).astype(float)
    own = (np.random.default_rng(300 + seed).uniform(0, 1, n) < bias).astype(float)
    per_query = {
        "xquad_r/monolingual/AP": mono,
        "xquad_r/multilingual/AP": multi,
        "xquad_r/bias/own_language_top1": own,
    }
    metrics = {k.replace("/AP", "/mAP"): float(v.mean()) for k, v in per_query.items()}
    # tatoeba has no per-query array here: the report must show the difference without a CI.
    metrics["tatoeba/acc@1"] = float(acc.mean())
    values = (np.full((3, 3), 0.4) + np.eye(3) * 0.3 + shift).tolist()
    return FakeResult(metrics, per_query, {"xquad_r/xy_mAP": {"languages": LANGS, "values": values}})


def _scores(hbt_shift: float, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, dict[int, FakeResult]]:
    return {
        "x_x_mono": {s: _result(0.0, s, bias=0.8) for s in seeds},
        "x_y": {s: _result(0.0, s + 10, bias=0.5) for s in seeds},
        "hbt": {s: _result(hbt_shift, s + 20, bias=0.3) for s in seeds},
    }


def test_per_query_key() -> None:
    assert per_query_key("xquad_r/multilingual/mAP") == "xquad_r/multilingual/AP"
    assert per_query_key("tatoeba/acc@1") == "tatoeba/acc@1"
    assert per_query_key("xquad_r/bias/own_language_top1") == "xquad_r/bias/own_language_top1"


def test_report_files_and_answers(tmp_path: Path) -> None:
    reductions = ["2 of 12 encoder layers", "3 of 11 languages"]
    report = build_report(_scores(0.05), _result(-0.1, 99), METRICS, tmp_path, reductions=reductions, n_samples=500)

    for name in ["report.md", "report.json", "heatmap_xquad_r_xy_mAP.png", "bias.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "bias.png").read_bytes()[:4] == b"\x89PNG"

    md = (tmp_path / "report.md").read_text()
    assert "HBT improves xquad_r vs X-X-mono and X-Y." in md
    assert "averaged over each strategy's seeds" in md
    assert all(r in md for r in reductions)
    assert summary_table(report) in md
    assert "(no CI)" in md  # tatoeba: no per-query scores

    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["reductions"] == reductions
    rows = {r["key"]: r for r in loaded["rows"]}
    multi = rows["xquad_r/multilingual/mAP"]["comparisons"]["x_y"]
    assert multi["ci_low"] <= 0.05 <= multi["ci_high"] and multi["verdict"] == "improves"
    mono = rows["xquad_r/monolingual/mAP"]["comparisons"]["x_x_mono"]
    assert mono["verdict"] == "no significant difference"
    # Lower bias is better: HBT's lower own-language rate "improves".
    assert rows["xquad_r/bias/own_language_top1"]["comparisons"]["x_x_mono"]["verdict"] == "improves"
    assert rows["tatoeba/acc@1"]["comparisons"]["x_y"]["ci_low"] is None
    hbt_score = rows["xquad_r/multilingual/mAP"]["scores"]["hbt"]
    assert hbt_score["n_seeds"] == 3 and hbt_score["std"] > 0
    assert summary_table(loaded) == summary_table(report)  # works on the JSON too


@pytest.mark.parametrize(
    ("shift", "phrase"),
    [
        (-0.05, "HBT degrades xquad_r vs X-X-mono and X-Y."),
        (0.0, "HBT shows no significant difference on xquad_r vs X-X-mono and X-Y."),
    ],
)
def test_answer_lines(shift: float, phrase: str) -> None:
    report = compute_report(_scores(shift, seeds=(0,)), None, METRICS, n_samples=300)
    lines = [a["line"] for a in report["answers"]]
    assert phrase in lines
    assert any(line.startswith("HBT cannot be tested on tatoeba") for line in lines)
    # One seed: scores without ± std.
    assert " ± " not in summary_table(report)


def test_missing_strategy_is_an_error() -> None:
    scores = _scores(0.0, seeds=(0,))
    del scores["x_y"]
    with pytest.raises(ValueError, match="'x_y'"):
        compute_report(scores, None, METRICS)


def test_unpairable_per_query_arrays_are_an_error() -> None:
    scores = _scores(0.0, seeds=(0,))
    scores["x_y"][0] = _result(0.0, 0, n=100)
    with pytest.raises(ValueError, match="per-query"):
        compute_report(scores, None, METRICS)


def test_mixed_answer_names_the_metrics() -> None:
    scores = _scores(0.05, seeds=(0,))
    scores["hbt"][0] = _result(0.05, 20, mono_shift=-0.05)
    report = compute_report(scores, None, METRICS, n_samples=300)
    line = report["answers"][0]["line"]
    assert line.startswith("HBT gives mixed results on xquad_r vs X-X-mono and X-Y")
    assert "vs X-Y it improves multilingual/mAP but degrades monolingual/mAP" in line
    assert report["answers"][0]["verdicts"] == {"x_x_mono": "mixed", "x_y": "mixed"}


def test_non_finite_metrics_are_missing_not_nan(tmp_path: Path) -> None:
    scores = _scores(0.05, seeds=(0,))
    scores["x_y"][0].metrics["tatoeba/acc@1"] = float("nan")
    scores["hbt"][0].matrices["xquad_r/xy_mAP"]["values"][0][1] = float("nan")  # a missing pair
    report = build_report(scores, None, METRICS, tmp_path, n_samples=200)
    rows = {r["key"]: r for r in report["rows"]}
    assert rows["tatoeba/acc@1"]["scores"]["x_y"] is None
    assert rows["tatoeba/acc@1"]["comparisons"]["x_y"] is None

    def no_nan(c: str) -> None:
        raise AssertionError(f"{c} in report.json")

    json.loads((tmp_path / "report.json").read_text(), parse_constant=no_nan)
