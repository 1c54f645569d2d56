"""`ray job submit` against a real `ray start --head`: the training entrypoint runs and logs to MLflow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(temp_dir: str) -> None:
    """Stops only the head this test started: its processes name its own temp dir (``ray stop`` would stop every Ray on the host)."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started the way a cluster is (token auth off for this local test only), in its own temp dir."""
    import tempfile

    import ray

    ray.shutdown()  # this process's own local Ray, if a test started one; the next test restarts it
    # A short private temp dir (Ray's socket paths must stay under 108 bytes): it marks this head's processes.
    temp_dir = tempfile.mkdtemp(prefix="hbt-ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port, dash = _free_port(), _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # Every agent port free-picked: a Ray shut down a moment ago (or another on the
    # machine) can still hold the defaults, and then the job agent never registers.
    agent_ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                   f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                    "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}", *agent_ports],
                   env=env, check=True, capture_output=True)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(temp_dir)


def test_ray_job_submit_runs_training_and_logs_to_mlflow(ray_head, tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.cluster.harness import submit_job

    address, env = ray_head
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        db = f"sqlite:///{tmp_path / 'mlflow.db'}"
        entry = (f"python -m ray_jobs.train --config configs/local.yaml output_dir={tmp_path / 'out'} "
                 f"model.name_or_path={tiny_model_dir} tracking.uri={db} run_name=job-test "
                 "train.max_steps=3 train.warmup_steps=0 train.log_every=1 batching.global_batch_size=4 data.max_questions=16 "
                 "data.languages=[en,de] eval.languages=[en,de] model.freeze_embeddings=false "
                 # One node: its disk is every node's disk (the separate-node case is tests/cluster/).
                 "ray.shared_filesystem=true")
        runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": ["runs/", "mlruns/", "*.db", ".git/"],
                       # relative data paths resolve against the checkout, not the uploaded copy
                       "env_vars": {"HBT_DATA_ROOT": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled"}}
        status, logs = submit_job(address, entry, runtime_env)
        assert status == "SUCCEEDED", logs[-3000:]
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
    assert "[hbt] step 3/3" in logs
    runs = MlflowClient(db).search_runs(
        [MlflowClient(db).get_experiment_by_name("hbt").experiment_id], "attributes.run_name = 'job-test'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "train/loss" in runs[0].data.metrics
    result = json.loads((tmp_path / "out" / "job-test" / "result.json").read_text())
    assert Path(result["model_dir"], "model.safetensors").exists()
