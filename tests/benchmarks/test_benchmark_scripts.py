"""Smoke tests for benchmarks/*.py: each script runs end to end at tiny sizes and prints its JSON line.

The numbers are meaningless at these sizes; the tests only keep the scripts from
rotting (imports, hbt APIs they call, the JSON they print). The parts that start
Ray are marked ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(script: str, *args: str, timeout: int = 600) -> dict:
    """Runs benchmarks/SCRIPT; its stdout must be exactly one JSON line, which is returned."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, f"stdout must hold exactly the JSON line, got {proc.stdout[-2000:]!r}"
    return json.loads(lines[0])


def test_train_throughput_bare_and_sentence_transformers(tiny_model_dir, tmp_path):
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    out = run_script("train_throughput.py", "--model", str(tiny_model_dir), "--reps", "1", "--warmup", "1", "--steps", "2",
               "--log-every", "1", "--contenders", "bare,sentence_transformers", "--out", str(tmp_path / "r.json"))
    assert set(out["pairs_per_s_median"]) == {"bare", "sentence_transformers"}
    assert out["pairs_per_s_median"]["bare"] > 0
    # Both contenders trained on the very same token ids.
    assert out["tokens_timed_check"]["bare"] == out["tokens_timed_check"]["sentence_transformers"]
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "train_throughput"


@pytest.mark.slow
def test_train_throughput_hbt_path(tiny_model_dir):
    out = run_script("train_throughput.py", "--model", str(tiny_model_dir), "--reps", "1", "--warmup", "1", "--steps", "2",
               "--log-every", "1", "--contenders", "bare,hbt_zero0", "--interleaved")
    assert out["pairs_per_s_median"]["hbt_zero0"] > 0
    assert set(out["interleaved"]["pairs_per_s"]) == {"bare", "engine_zero0", "engine_zero2"}
    assert 0.0 <= out["data_wait_frac_median"]["hbt_zero0"] <= 1.0
    assert "hbt_zero0/bare" in out["ratios"]
    # hbt streamed the same pairs as the bare loop (its tokens/s x window time, so approximately).
    assert out["tokens_timed_check"]["hbt_zero0"] == pytest.approx(out["tokens_timed_check"]["bare"], rel=0.02)


def test_encode_throughput_bare(tiny_model_dir):
    out = run_script("encode_throughput.py", "--model", str(tiny_model_dir), "--texts", "64", "--batch-size", "16",
               "--reps", "1", "--precisions", "fp32,bf16", "--layouts", "", "--variants")
    assert out["texts_per_s_median"]["bare/fp32"] > 0
    assert "bare_bf16_weights/bf16" in out["texts_per_s_median"]


@pytest.mark.slow
def test_encode_throughput_hbt_actor_pool(tiny_model_dir):
    out = run_script("encode_throughput.py", "--model", str(tiny_model_dir), "--texts", "64", "--batch-size", "16",
               "--reps", "1", "--precisions", "fp32", "--layouts", "1x2")
    assert out["texts_per_s_median"]["hbt_1x2/fp32"] > 0
    # the actor pool embeds exactly what the bare loop embeds
    assert out["max_abs_diff"]["hbt_1x2/fp32 vs bare/fp32"] < 1e-4


def test_search_small_pools():
    out = run_script("search.py", "--pools", "2000,5000", "--queries", "50", "--k", "10", "--reps", "1", "--shards", "1,2",
               "--ivfpq", "--ivf-nlist", "8", "--pq-m", "8", "--nprobe", "4")
    assert [p["n"] for p in out["pools"]] == [2000, 5000]
    for p in out["pools"]:
        # every contender returns the exact top-k scores
        assert max(p["max_abs_score_diff_vs_faiss_flat"].values()) < 1e-4
        assert sum(p["memory"]["sharded_2"]["bytes_per_shard"]) == p["n"] * 384 * 4
    assert out["ivfpq"]["bytes_per_vector"] < 384 * 4
    assert set(out["time_growth_exponent"]) >= {"sharded_1", "faiss_flat", "numpy"}


@pytest.mark.slow
def test_eval_end_to_end_tiny(tiny_model_dir):
    out = run_script("eval_end_to_end.py", "--model", str(tiny_model_dir), "--variants", "fp32,bf16w",
               "--languages", "en,de", "--max-questions", "5")
    assert set(out["summary"]) == {"fp32", "bf16w"}
    assert out["summary"]["fp32"]["max_abs_mAP_diff_vs_fp32"] == 0.0
    assert out["headline_mAP"]["fp32"] is not None


def test_gpu_throughput_skips_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU-marked test runs the script for real")
    out = run_script("gpu_throughput.py", "--steps", "2")
    assert out["skipped"] and "CUDA" in out["reason"]


@pytest.mark.gpu
def test_gpu_throughput_on_the_gpu():
    """The real GPU path: bf16 training steps and encoding on CUDA (skips without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = run_script("gpu_throughput.py", "--tiny", "--steps", "3", "--warmup", "1")
    assert not out["skipped"] and out["train"]["pairs_per_s"] > 0 and out["encode"]["texts_per_s"] > 0


def test_gpu_throughput_code_path_on_cpu():
    """The GPU script's measuring code, run on a tiny model on the CPU (no GPU here to run it for real)."""
    out = run_script("gpu_throughput.py", "--device", "cpu", "--tiny", "--batch", "4", "--length", "8",
               "--encode-batch", "4", "--steps", "1", "--warmup", "0")
    assert not out["skipped"] and out["train"]["pairs_per_s"] > 0 and out["encode"]["texts_per_s"] > 0


@pytest.mark.slow
def test_roofline_counts_the_default_evaluation(tiny_model_dir):
    sys.path.insert(0, str(BENCH))
    from roofline import forward_flops, linear_flops_per_token

    e5_small = {"hidden": 384, "intermediate": 1536, "layers": 12}
    # 12 layers x (Q, K, V, output 384x384 + two 384x1536 FFN matrices) x 2 FLOPs a multiply-add.
    assert linear_flops_per_token(e5_small) == 12 * 2 * (4 * 384 * 384 + 2 * 384 * 1536) == 42_467_328
    assert forward_flops([10, 20], e5_small) == 30 * 42_467_328 + 12 * 4 * 384 * (100 + 400)
    out = run_script("roofline.py", "--model", str(tiny_model_dir), "--sample", "32", "--skip-study", "--gemm-tokens", "128")
    assert out["default_eval"]["distinct_texts"] > 20_000  # every distinct XQuAD-R text, counted
    for p in ("fp32", "bf16_weights"):
        assert 0 < out["encoder_1_thread"][p]["vs_gemm_peak"]
    assert out["default_eval"]["encode_floor_s_at_gemm_peak"]["bf16"] > 0
