"""Smoke test for benchmarks/short_train.py: ``hbt train`` and a sentence-transformers script, 2 steps each.

The numbers are meaningless at this size (tiny model); the test keeps the script
from rotting: the hbt CLI command it runs, the metrics.jsonl fields it reads, the
sentence-transformers script, and the JSON line it prints.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.benchmarks.test_benchmark_scripts import run_script


@pytest.mark.slow
def test_short_train_hbt_vs_sentence_transformers(tiny_model_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    out = run_script("short_train.py", "--model", str(tiny_model_dir), "--steps", "2", "--reps", "1",
                     "--out", str(tmp_path / "r.json"))
    assert out["benchmark"] == "short_train"
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "short_train"
    for c in ("hbt", "sentence_transformers"):
        (r,) = out["raw"][c]
        assert r["steps_done"] == 2, c
        assert 0 < r["to_loop_start_s"] < r["wall_s"], c
        assert 0 < r["steps_s"] < r["wall_s"], c
        assert out["wall_s_median"][c] > 0
    assert out["raw"]["hbt"][0]["final_step_reported"] == 2
    assert out["raw"]["sentence_transformers"][0]["global_step"] == 2
    rt = out["ratio_hbt_over_st"]
    assert isinstance(rt, float) and math.isfinite(rt) and rt > 0
    assert out["setup"]["sentence_transformers"]["batch"] == out["setup"]["batch_pairs"] == 32
