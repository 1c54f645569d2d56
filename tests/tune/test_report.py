"""The search report on hand-made trials: Pareto front, best trial and config, tables, plots."""

from __future__ import annotations

import json

import yaml

from hbt.cli import main as hbt_main
from hbt.config import load_config
from hbt.tune.report import TrialRow, best_trial, pareto_front, write_reports


def test_pareto_front_keeps_the_non_dominated_points():
    points = [
        (0.5, 0.5, 0.5),   # 0: on the front
        (0.4, 0.5, 0.5),   # 1: dominated by 0
        (0.6, 0.2, 0.3),   # 2: best monolingual: on the front
        (0.5, 0.5, 0.5),   # 3: equal to 0: neither dominates, both stay
        (0.1, 0.9, 0.1),   # 4: best cross-lingual: on the front
        (0.6, 0.2, 0.2),   # 5: dominated by 2 (equal, equal, worse)
        (float("nan"), 1.0, 1.0),  # 6: not finite: left out
    ]
    assert pareto_front(points) == [0, 2, 3, 4]
    assert pareto_front([(0.1, 0.2, 0.3)]) == [0]
    assert pareto_front([]) == []


def test_pareto_front_matches_a_brute_force_definition():
    import random

    rng = random.Random(0)
    pts = [tuple(rng.choice([0.1, 0.2, 0.3]) for _ in range(3)) for _ in range(40)]
    naive = [i for i, a in enumerate(pts)
             if not any(b != a and all(y >= x for x, y in zip(a, b)) for b in pts)]
    assert pareto_front(pts) == naive


def _row(tid, alpha, mono, cross, multi, status="TERMINATED", error=None):
    metrics = {} if status != "TERMINATED" else {
        "objective": multi, "dev/monolingual/mAP": mono, "dev/cross_lingual/mAP": cross,
        "dev/multilingual/mAP": multi, "dev/bias/own_language_top1": 1 - alpha, "train/loss": 1.0, "step": 3.0}
    return TrialRow(tid, status, {"batching.alpha": alpha}, metrics, error)


ROWS = [_row("t0", 0.0, 0.40, 0.50, 0.45), _row("t1", 0.5, 0.50, 0.45, 0.50), _row("t2", 1.0, 0.55, 0.30, 0.40),
        _row("t3", 0.25, 0.30, 0.30, 0.30), _row("t4", 0.75, 0, 0, 0, status="ERROR", error="RuntimeError: boom")]


def test_best_trial_follows_the_mode_and_skips_errors():
    assert best_trial(ROWS, "max").trial_id == "t1"
    assert best_trial(ROWS, "min").trial_id == "t3"
    assert best_trial([ROWS[-1]], "max") is None


def test_write_reports(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "run_name=s1", "batching.strategy=mono"])
    summary = write_reports(tmp_path / "s1", ROWS, cfg, {"batching.strategy": "hybrid"}, ["batching.alpha"])
    assert summary["best"] == {"trial_id": "t1", "params": {"batching.alpha": 0.5}, "objective": 0.5}
    assert summary["pareto"] == ["t0", "t1", "t2"]
    assert summary["counts"] == {"TERMINATED": 4, "STOPPED": 0, "ERROR": 1}

    pareto = json.loads((tmp_path / "s1" / "pareto.json").read_text())
    assert [p["trial_id"] for p in pareto["front"]] == ["t0", "t1", "t2"] and pareto["dominated"] == ["t3"]
    table = (tmp_path / "s1" / "trials.md").read_text()
    assert "| t4 | ERROR | 0.75 |" in table and "RuntimeError: boom" in table
    assert (tmp_path / "s1" / "trials.csv").read_text().count("\n") == 6
    assert "| t3 |" not in (tmp_path / "s1" / "pareto.md").read_text()
    png = tmp_path / "s1" / "plot_batching.alpha.png"
    assert png.read_bytes()[:4] == b"\x89PNG"

    best = tmp_path / "s1" / "best_config.yaml"
    assert hbt_main(["config", "validate", str(best)]) == 0
    got = load_config(best)
    # The space's fixed value and the best params over the starting config; run_name cleared.
    assert got.batching.strategy == "hybrid" and got.batching.alpha == 0.5 and got.run_name is None
    assert yaml.safe_load(best.read_text())["output_dir"] == str(tmp_path)


def test_write_reports_without_a_finished_trial(tmp_path):
    summary = write_reports(tmp_path, [ROWS[-1]], load_config(None), {}, ["batching.alpha"])
    assert summary["best"] is None and summary["pareto"] == []
    assert not (tmp_path / "best_config.yaml").exists()
