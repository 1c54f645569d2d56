"""The study report on synthetic evaluation results with known answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hbt.eval.metrics import per_query_key
from hbt.study.report import build_report, compute_report, endpoints_table, summary_table

LANGS = ["ar", "de", "en"]
METRICS = [
    "xquad_r/monolingual/mAP",
    "xquad_r/multilingual/mAP",
    "xquad_r/bias/own_language_top1",
    "tatoeba/xx-eng/acc@1",
]
DOMAIN_SHIFT = ["tatoeba/xx-eng/acc@1"]


@dataclass
class FakeResult:
    """Satisfies EvalResultLike."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    matrices: dict[str, dict[str, Any]] = field(default_factory=dict)
    units: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _result(shift: float, seed: int, n_q: int = 150, bias: float = 0.5, mono_shift: float = 0.0,
            tatoeba_shift: float = 0.0) -> FakeResult:
    """Per-query AP = a shared per-question difficulty + shift + small seed noise, 3 languages per question."""
    q = np.repeat(np.arange(n_q), 3).astype(str)
    lang = np.tile(LANGS, n_q)
    difficulty = np.repeat(np.random.default_rng(0).uniform(0.2, 0.8, n_q), 3)
    # Seed noise shared by a question's language versions (they move together), plus a little per row.
    rng = np.random.default_rng(100 + seed)
    noise = np.repeat(rng.normal(0.0, 0.02, n_q), 3) + rng.normal(0.0, 0.005, q.size)
    mono = difficulty + mono_shift + noise
    multi = difficulty + shift + noise
    own = (np.random.default_rng(300 + seed).uniform(0, 1, q.size) < bias).astype(float)
    tat_p = np.clip(0.7 + tatoeba_shift, 0, 1)
    acc = (np.random.default_rng(0).uniform(0, 1, 300) < tat_p).astype(float)
    flip = np.random.default_rng(200 + seed).uniform(0, 1, 300) < 0.01  # a little seed noise
    acc = np.where(flip, 1 - acc, acc)
    lines = np.array([f"deu:{i}" for i in range(300)])
    units = {
        "xquad_r/monolingual/AP": {"question": q, "article": q, "stratum": lang},
        "xquad_r/multilingual/AP": {"question": q, "article": q},
        "xquad_r/bias/own_language_top1": {"question": q, "article": q},
        "tatoeba/xx-eng/acc@1": {"question": lines, "article": lines},
    }
    per_query = {"xquad_r/monolingual/AP": mono, "xquad_r/multilingual/AP": multi,
                 "xquad_r/bias/own_language_top1": own, "tatoeba/xx-eng/acc@1": acc}
    metrics = {"xquad_r/monolingual/mAP": float(np.mean([mono[lang == x].mean() for x in LANGS])),
               "xquad_r/multilingual/mAP": float(multi.mean()),
               "xquad_r/bias/own_language_top1": float(own.mean()), "tatoeba/xx-eng/acc@1": float(acc.mean())}
    values = (np.full((3, 3), 0.4) + np.eye(3) * 0.3 + shift).tolist()
    return FakeResult(metrics, per_query, {"xquad_r/xy_mAP": {"languages": LANGS, "values": values}}, units)


def _scores(hbt_shift: float, seeds: tuple[int, ...] = (0, 1, 2), tatoeba_shift: float = 0.0):
    return {
        "x_x_mono": {s: _result(0.0, s, bias=0.8) for s in seeds},
        "x_y": {s: _result(0.0, s + 10, bias=0.5) for s in seeds},
        "hbt": {s: _result(hbt_shift, s + 20, bias=0.3, tatoeba_shift=tatoeba_shift) for s in seeds},
    }


def test_per_query_key() -> None:
    assert per_query_key("xquad_r/multilingual/mAP") == "xquad_r/multilingual/AP"
    assert per_query_key("mAP") == "AP"
    assert per_query_key("tatoeba/acc@1") == "tatoeba/acc@1"


def test_report_files_endpoints_and_answer(tmp_path: Path) -> None:
    reductions = ["2 of 12 encoder layers", "3 of 11 languages"]
    report = build_report(_scores(0.05), _result(-0.1, 99), METRICS, tmp_path, reductions=reductions, n_samples=500,
                          primary="xquad_r/multilingual/mAP", domain_shift=DOMAIN_SHIFT, margin=0.05)
    for name in ["report.md", "report.json", "heatmap_xquad_r_xy_mAP.png", "bias.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "report.md").read_text()
    assert md.splitlines()[0] == "# Does HBT hurt retrieval under domain shift?"
    assert report["answer"] in md and summary_table(report) in md and endpoints_table(report) in md
    assert all(r in md for r in reductions)

    loaded = json.loads((tmp_path / "report.json").read_text())
    primary = loaded["endpoints"]["primary"]["comparisons"]
    assert primary["x_y"]["verdict"] == "better" and primary["zero_shot"]["verdict"] == "better"
    assert primary["x_y"]["low"] <= 0.05 <= primary["x_y"]["high"]
    # Tatoeba equal in expectation, margin 0.05: non-inferior against both baselines and zero-shot.
    # The baselines are the question's family; zero-shot ("does fine-tuning hurt?") is a family of its own.
    ds, ft = loaded["endpoints"]["domain_shift"], loaded["endpoints"]["fine_tuning"]
    assert [e["comparator"] for e in ds] == ["x_x_mono", "x_y"] and [e["comparator"] for e in ft] == ["zero_shot"]
    assert loaded["endpoints"]["holm_domain_shift"] == 2 and loaded["endpoints"]["holm_fine_tuning"] == 1
    assert all(e["verdict"] in ("non-inferior", "better") for e in ds + ft)
    # Tatoeba's seed noise here is per-line flips (question x seed interaction only): no seed component.
    assert all(e["n_seeds_a"] == 3 and e["seed_var_a"] >= 0.0 for e in ds)
    assert loaded["answer"].startswith("No: HBT is non-inferior (margin 0.05")
    rows = {r["key"]: r for r in loaded["rows"]}
    # diff is the difference of the score columns (seed means of macro means).
    mono = rows["xquad_r/monolingual/mAP"]
    col_diff = mono["scores"]["hbt"]["mean"] - mono["scores"]["x_y"]["mean"]
    assert mono["comparisons"]["x_y"]["diff"] == pytest.approx(col_diff, abs=1e-12)
    assert rows["xquad_r/multilingual/mAP"]["scores"]["hbt"]["n_seeds"] == 3
    assert summary_table(loaded) == summary_table(report)


def test_an_inferior_endpoint_answers_yes() -> None:
    report = compute_report(_scores(0.0, tatoeba_shift=-0.2), None, METRICS, n_samples=300,
                            domain_shift=DOMAIN_SHIFT, margin=0.01)
    assert {e["verdict"] for e in report["endpoints"]["domain_shift"]} == {"inferior"}
    assert report["answer"].startswith("Yes: HBT hurts retrieval under domain shift")


def test_question_clusters_widen_the_interval() -> None:
    """The same data resampled by question vs by row: the question interval is wider (3 correlated rows each)."""
    scores = _scores(0.0, seeds=(0,))
    by_q = compute_report(scores, None, METRICS, n_samples=500)
    for runs in scores.values():
        for r in runs.values():
            u = r.units["xquad_r/multilingual/AP"]
            u["question"] = u["article"] = np.arange(u["question"].size).astype(str)
    by_row = compute_report(scores, None, METRICS, n_samples=500)
    width = lambda rep: (lambda c: c["high"] - c["low"])(rep["rows"][1]["comparisons"]["x_y"])  # noqa: E731
    assert width(by_q) > 1.3 * width(by_row)


def test_missing_strategy_and_unpairable_queries_are_errors() -> None:
    scores = _scores(0.0, seeds=(0,))
    del scores["x_y"]
    with pytest.raises(ValueError, match="'x_y'"):
        compute_report(scores, None, METRICS)
    scores = _scores(0.0, seeds=(0,))
    scores["x_y"][0] = _result(0.0, 0, n_q=100)
    with pytest.raises(ValueError, match="different queries"):
        compute_report(scores, None, METRICS)


def test_non_finite_metrics_are_missing_not_nan(tmp_path: Path) -> None:
    scores = _scores(0.05, seeds=(0,))
    scores["x_y"][0].metrics["tatoeba/xx-eng/acc@1"] = float("nan")
    scores["hbt"][0].matrices["xquad_r/xy_mAP"]["values"][0][1] = float("nan")  # a missing pair
    report = build_report(scores, None, METRICS, tmp_path, n_samples=200)
    rows = {r["key"]: r for r in report["rows"]}
    assert rows["tatoeba/xx-eng/acc@1"]["scores"]["x_y"] is None

    def no_nan(c: str) -> None:
        raise AssertionError(f"{c} in report.json")

    json.loads((tmp_path / "report.json").read_text(), parse_constant=no_nan)


def test_a_lower_is_better_endpoint_gets_verdicts_in_its_own_direction() -> None:
    """Language bias as an endpoint: HBT's own-language share is 0.3 against X-X-mono's 0.8 (less bias):
    that is better, not inferior; against X-Y's 0.5 likewise. Were the direction ignored, both would read inferior."""
    bias = "xquad_r/bias/own_language_top1"
    report = compute_report(_scores(0.0), None, METRICS, n_samples=1000, domain_shift=[bias], margin=0.05)
    verdicts = {e["comparator"]: e["verdict"] for e in report["endpoints"]["domain_shift"]}
    assert verdicts == {"x_x_mono": "better", "x_y": "better"}
    assert all(e["diff"] < 0 and not e["higher_is_better"] for e in report["endpoints"]["domain_shift"])
    # And a more biased HBT is inferior.
    worse = _scores(0.0)
    worse["hbt"] = {s: _result(0.0, s + 20, bias=0.95) for s in (0, 1, 2)}
    report = compute_report(worse, None, METRICS, n_samples=1000, domain_shift=[bias], margin=0.05)
    assert {e["verdict"] for e in report["endpoints"]["domain_shift"]} == {"inferior"}
    assert report["answer"].startswith("Yes:")


def test_a_reduced_pool_is_labelled_in_every_table_that_shows_it() -> None:
    report = compute_report(_scores(0.0), None, METRICS, n_samples=300, domain_shift=DOMAIN_SHIFT,
                            reduced_pools=["xquad_r"])
    table = summary_table(report)
    xquad_rows = [ln for ln in table.splitlines() if ln.startswith("| xquad_r")]
    assert xquad_rows and all("reduced pool" in ln for ln in xquad_rows)
    assert not any("reduced pool" in ln for ln in table.splitlines() if ln.startswith("| tatoeba"))
    assert "not the benchmark's published mAP" in table
    assert "reduced pool" not in endpoints_table(report)  # Tatoeba endpoints only: nothing to label


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in [ax.title, ax.xaxis.label, ax.yaxis.label]] + \
        [fig._suptitle.get_text() if fig._suptitle else ""]


def test_each_plot_kind_says_what_it_shows(tmp_path: Path) -> None:
    """Axes, tick labels and titles of the three plot kinds, read from the matplotlib objects."""
    from hbt.study.report import plot_bias, plot_by_language, plot_matrices

    order = ["x_x_mono", "x_y", "hbt"]
    grid = {s: {"languages": LANGS, "values": (np.eye(3) * 0.2 + 0.5 + i / 100).tolist()}
            for i, s in enumerate(["zero_shot", *order])}
    fig = plot_matrices("xquad_r/cross_lingual/mAP", grid, order, tmp_path / "h.png")
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 4 and [ax.get_title() for ax in heat] == ["zero-shot", "X-X-mono", "X-Y", "HBT"]
    assert all([t.get_text() for t in ax.get_xticklabels()] == LANGS for ax in heat)
    assert heat[0].get_ylabel() == "query language X" and heat[0].get_xlabel() == "candidate language Y"
    assert heat[0].images[0].get_array().shape == (3, 3)
    title = fig._suptitle.get_text()
    assert title.startswith("XQuAD-R, cross-lingual mAP") and "/" not in title.split(":")[0]
    # A cell label per cell, big enough to read.
    assert len(heat[0].texts) == 9 and min(t.get_fontsize() for t in heat[0].texts) >= 7

    vec = {s: {"languages": LANGS, "values": [[0.5, 0.6, 0.7]], "std": [[0.01, 0.02, 0.03]]}
           for s in ["zero_shot", *order]}
    vec["zero_shot"].pop("std")
    fig = plot_by_language("xquad_r/multilingual/mAP_by_language", vec, order, tmp_path / "b.png")
    (ax,) = fig.axes
    assert not ax.images, "a per-language vector is drawn as bars, not as a 1-row heatmap"
    assert len(ax.patches) == 3 * 4 and [t.get_text() for t in ax.get_xticklabels()] == LANGS
    assert ax.get_xlabel() == "query language" and ax.get_ylabel() == "mAP"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero-shot", "X-X-mono", "X-Y", "HBT"]
    assert "by query language" in fig._suptitle.get_text()

    bias = {"xquad_r/bias/own_language_top1": {s: {"mean": 0.9 - i / 10, "std": None if s == "zero_shot" else 0.01}
                                               for i, s in enumerate(["zero_shot", *order])},
            "xquad_r/bias/own_language_chance": {s: {"mean": 1 / 3, "std": 0.0} for s in ["zero_shot", *order]},
            "xquad_r/bias/rank_distance_mean": {s: {"mean": 20.0 + i, "std": 1.0}
                                                for i, s in enumerate(["zero_shot", *order])}}
    fig = plot_bias(bias, order, tmp_path / "bias.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2, "the chance level is a line in the top-1 panel, not bars of its own"
    top1, ranks = panels
    assert len(top1.patches) == 4 and [round(p.get_height(), 6) for p in top1.patches] == [0.9, 0.8, 0.7, 0.6]
    chance = [ln for ln in top1.lines if ln.get_linestyle() == "--"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(1 / 3)
    assert "chance" in top1.get_legend().get_texts()[0].get_text()
    assert "XQuAD-R" in top1.get_title() and "/" not in top1.get_title()
    assert "lower: less bias" in ranks.get_ylabel()
    assert all("bias/" not in t for t in _texts(fig))
