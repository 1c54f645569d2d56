"""benchmarks/gpu_check.py: the CPU mode the suite runs (no CUDA here), and the GPU mode where there is one.

The CPU mode takes 1-4 minutes on 2 shared cores (DeepSpeed init, Ray start, a tiny evaluation),
hence ``slow``; the GPU mode is the full check (under 8 minutes) and skips without CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, f"stdout must hold exactly the JSON line: {proc.stdout[-2000:]!r} {proc.stderr[-3000:]}"
    return proc, json.loads(lines[0])


@pytest.mark.slow
def test_cpu_mode(offline_e5_dir, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc, result = _run("--mode", "cpu", "--model", str(offline_e5_dir), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["mode"] == "cpu" and result["ok"] and all(result["checks"].values()), result["checks"]
    # The GPU parts are skipped, and the skip is said plainly.
    assert {"cuda", "train_zero2_bf16", "faiss_gpu", "eval_full_gpu"} <= set(result["skipped"])
    assert "SKIPPED the GPU parts: no CUDA device" in proc.stderr
    train = result["parts"]["train"]
    assert train["loss_last_mean"] < train["loss_first_mean"] and train["pairs_per_s"] > 0
    assert result["parts"]["faiss"]["cpu_sharded_max_abs_score_diff"] < 1e-3
    assert result["parts"]["eval"]["fp32"]["mAP_keys"] > 0
    assert json.loads(out.read_text())["checks"] == result["checks"]


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_mode(offline_e5_dir, tmp_path):
    proc, result = _run("--mode", "gpu", "--model", str(offline_e5_dir), "--out", str(tmp_path / "g.json"),
                        timeout=600)
    assert result["mode"] == "gpu"
    assert proc.returncode == 0, json.dumps(result["checks"]) + proc.stderr[-4000:]
    train = result["parts"]["train"]
    assert train["zero_stage"] == 2 and train["precision"] == "bf16" and train["steps"] == 100
    assert train["mfu"] is None or 0 < train["mfu"] < 1
    for prec in ("bf16", "fp32"):
        ev = result["parts"]["eval"][prec]
        assert ev["mAP_keys"] == 135 and ev["max_abs_mAP_diff_vs_cpu_fp32"] <= 0.005, ev
