"""The training job end to end: fault recovery, the local config on the real model, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT, load_config
from hbt.train.job import run_training


def _tiny_cfg(model_dir, out, *extra):
    return load_config(None, [
        f"output_dir={out}", f"model.name_or_path={model_dir}", "data.languages=[en,de,es]",
        "data.max_questions=64", "batching.global_batch_size=8", "model.max_passage_length=48",
        "model.max_query_length=24", "train.max_steps=8", "train.warmup_steps=2", "train.log_every=1",
        "train.lr=1e-3", "tracking.experiment=hbt-tests", *extra,
    ])


@pytest.mark.slow
def test_fault_after_checkpoint_resumes_to_the_same_final_loss(tiny_model_dir, tmp_path, ray_local):
    clean = run_training(_tiny_cfg(tiny_model_dir, tmp_path / "clean", "run_name=clean"))
    faulty = run_training(_tiny_cfg(tiny_model_dir, tmp_path / "faulty", "run_name=faulty",
                                    "train.checkpoint_every=3", "train.fault_inject_step=4",
                                    "train.fault_inject_rank=1", "ray.max_failures=1"))
    assert (tmp_path / "faulty" / "faulty" / ".fault_injected_step4").exists()
    assert clean["metrics"]["step"] == faulty["metrics"]["step"] == 8
    assert abs(clean["metrics"]["train/loss"] - faulty["metrics"]["train/loss"]) <= 1e-4, (
        clean["metrics"]["train/loss"], faulty["metrics"]["train/loss"])
    # The fault hit after step 4 had been logged; the restart resumed from the step-3
    # checkpoint, so step 4 was trained (and logged) again, and nothing before it.
    steps = [json.loads(x)["step"] for x in (Path(faulty["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_explicit_resume_continues_a_finished_run(tiny_model_dir, tmp_path, ray_local):
    first = run_training(_tiny_cfg(tiny_model_dir, tmp_path, "run_name=r", "train.max_steps=4"))
    assert first["metrics"]["step"] == 4
    more = run_training(_tiny_cfg(tiny_model_dir, tmp_path, "run_name=r", "train.max_steps=6"), resume_from="r")
    assert more["metrics"]["step"] == 6


@pytest.mark.slow
def test_a_second_run_in_the_session_reuses_the_tokenised_table_and_its_skips(tiny_model_dir, tmp_path, ray_local):
    """A study trains nine times on the same rows: later runs take the first one's blocks
    (no read, no tokenising) and still report the skips those rows cost; other lengths, languages or
    prefixes make another key."""
    from hbt.train import job
    from tests.data.test_pipeline import _grouped_file

    (tmp_path / "data").mkdir()
    _grouped_file(tmp_path / "data" / "a.jsonl", 90, bad_every=10)
    data = [f"data.path={tmp_path / 'data'}", "data.format=grouped_jsonl", "data.languages=[en,de]",
            "data.on_bad_record=skip", "data.max_questions=100", "train.max_steps=3"]
    first = run_training(_tiny_cfg(tiny_model_dir, tmp_path, "run_name=a", *data))
    cached = {k: v[0] for k, v in job._TABLES.items()}
    second = run_training(_tiny_cfg(tiny_model_dir, tmp_path, "run_name=b", "batching.seed=1", *data))
    assert {k: v[0] for k, v in job._TABLES.items()} == cached  # the same block refs: nothing was read again
    assert first["metrics"]["data/skipped_records"] == second["metrics"]["data/skipped_records"] == 9
    key = job._table_key(_tiny_cfg(tiny_model_dir, tmp_path, *data), str(tiny_model_dir), "q", "p")
    for other in ("model.max_passage_length=40", "model.max_query_length=16", "data.max_questions=50"):
        assert job._table_key(_tiny_cfg(tiny_model_dir, tmp_path, *data, other), str(tiny_model_dir), "q", "p") != key
    assert job._table_key(_tiny_cfg(tiny_model_dir, tmp_path, *data), str(tiny_model_dir), "q", "p ") != key


@pytest.mark.slow
def test_local_config_trains_the_offline_model(offline_e5_dir, tmp_path, ray_local):
    """configs/local.yaml, 25 steps on the offline e5-small: loss falls, MLflow holds the run."""
    from mlflow.tracking import MlflowClient
    from transformers import AutoModel

    cfg = load_config(PROJECT_ROOT / "configs" / "local.yaml",
                      [f"output_dir={tmp_path}", "train.max_steps=25", "run_name=local25"])
    out = run_training(cfg)
    rows = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows]
    assert len(losses) == 5
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2, losses

    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.params["batching.strategy"] == "hybrid" and run.data.params["batching.alpha"] == "0.5"
    assert run.info.run_name == "local25" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(5, 26, 5))
    assert "train/samples_per_s" in run.data.metrics and "train/loss/mono" in run.data.metrics
    assert run.data.tags["hbt.final_model"] == out["model_dir"]

    model = AutoModel.from_pretrained(out["model_dir"])
    assert model.config.hidden_size == 384


def test_unreachable_tracking_server_does_not_stop_the_run(tmp_path):
    from hbt.tracking import Tracker

    with pytest.warns(UserWarning, match="going on"):
        t = Tracker("http://127.0.0.1:9", "e", "r", tmp_path)
    t.log_params({"a": {"b": 1}})
    t.log_metrics({"train/loss": 1.5}, step=3)
    t.end()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 1.5
    assert json.loads((tmp_path / "params.json").read_text())["a.b"] == 1


@pytest.mark.slow
def test_with_the_tracking_server_down_every_step_is_kept(tiny_model_dir, tmp_path, ray_local):
    """No MLflow run can be opened, yet rank 0's every step reaches the run's metrics.jsonl on the driver's disk."""
    with pytest.warns(UserWarning, match="going on"):
        out = run_training(_tiny_cfg(tiny_model_dir, tmp_path, "run_name=down", "tracking.uri=http://127.0.0.1:9",
                                     "train.max_steps=3", "train.warmup_steps=0"))
    assert out["mlflow_run_id"] is None
    rows = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("train/loss" in r for r in rows)
    assert out["pace"]["windows"] == 2


def test_resume_of_a_run_that_does_not_exist_fails_before_ray(tmp_path, capsys):
    import ray

    from hbt.cli import main

    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.yaml").write_text("{}\n")
    started = ray.is_initialized()
    assert main(["train", "--resume", "nope", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume 'nope': no run of that name under output_dir") and "earlier" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists() and ray.is_initialized() == started


def test_unreachable_storage_fails_before_ray(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "train", f"output_dir={tmp_path}",
         "ray.storage_path=s3://hbt-no-such-bucket/runs?endpoint_override=127.0.0.1:9&scheme=http"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ray.storage_path s3://hbt-no-such-bucket"), proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_training_pace_is_the_median_after_the_first_window(tmp_path):
    from hbt.train.job import training_pace

    rows = [{"step": 5 * i, "train/samples_per_s": s, "train/data_wait_frac": w}
            for i, (s, w) in enumerate([(1.0, 0.5), (10.0, 0.01), (12.0, 0.03), (11.0, 0.02)], 1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert training_pace(tmp_path) == {"pairs_per_s": 11.0, "data_wait_frac": 0.02, "windows": 3.0}
    assert training_pace(tmp_path / "elsewhere") == {}  # rank 0 ran on another node


def test_deepspeed_builds_no_shm_comm_op_for_training():
    """DeepSpeed compiles a CPU inference all-reduce op when its backend starts (27-34 s on a fresh
    install); training never calls it, and after hbt's build_engine setup nothing is built."""
    from deepspeed.comm.torch import build_shm_op

    from hbt.train.loop import skip_shm_comm_build

    skip_shm_comm_build()
    assert build_shm_op() is None
