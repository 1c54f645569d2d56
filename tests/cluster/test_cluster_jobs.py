"""hbt's jobs on a simulated cluster whose worker nodes share no disk with the head.

The head (0 CPUs) runs the job drivers, an MLflow server and moto's S3 server;
each worker node has 1 CPU, its own mount namespace with a private tmpfs over
the head's folders, and its own 127.0.0.x address (tests/cluster/harness.py).
A path handed from one node to another therefore names nothing there: every
hand-off must go through the storage, the MLflow server or Ray's objects.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow server on the head (sqlite backend, artifacts on the head's disk)."""
    head = tmp_path / "head"
    head.mkdir(exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{head / 'mlflow.db'}", "--artifacts-destination", str(head / "mlartifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow-server.log", "wb"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((tmp_path / "mlflow-server.log").read_text()[-2000:])
            time.sleep(1)
    try:
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _submit(cluster, entrypoint: str, timeout_s: float = 600) -> str:
    """Runs ``entrypoint`` with ``ray job submit``'s API on the cluster; returns its logs (asserts success)."""
    from tests.cluster.harness import submit_job

    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": ["runs/", "mlruns/", "*.db", ".git/"],
                   # The benchmarks are mounted at the same path on every node (cluster.yaml's file_mounts).
                   "env_vars": {"HBT_DATA_ROOT": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled"}}
    status, logs = submit_job(cluster.dashboard_url, entrypoint, runtime_env, timeout_s)
    assert status == "SUCCEEDED", logs[-4000:]
    return logs


def _train_worker_nodes(cluster) -> set[str]:
    """The node IPs Ray Train's workers ran on (dead actors included)."""
    from ray.util.state import list_actors, list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=cluster.dashboard_url, limit=100)}
    actors = list_actors(address=cluster.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                         detail=True, limit=1000)
    return {ips[a.node_id] for a in actors if a.node_id in ips}


def test_study_job_on_isolated_nodes_reports_on_the_head(tmp_path, sim_cluster, s3_server, mlflow_server,
                                                         monkeypatch):
    from mlflow.tracking import MlflowClient

    from hbt.model.tiny import build_tiny_model

    head = tmp_path / "head"
    model = build_tiny_model(head / "base-model")  # on the head's disk only
    cluster = sim_cluster(head_dirs=[head], workers=[{"cpus": 1}, {"cpus": 1}], env=s3_server.env)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    overrides = [
        f"output_dir={head / 'out'}", f"model.name_or_path={model}", "run_name=cl-study",
        f"tracking.uri={mlflow_server}", f"ray.storage_path={s3_server.uri()}",
        # One CPU per worker and per node: the two Train workers must sit on different nodes.
        "ray.num_workers=2", "ray.cpus_per_worker=1",
        "data.languages=[en,de]", "eval.languages=[en,de]", "data.max_questions=16",
        "batching.global_batch_size=4", "train.max_steps=2", "train.warmup_steps=0", "train.log_every=1",
        "model.max_passage_length=32", "model.max_query_length=16", "model.freeze_embeddings=false",
        "eval.max_questions=8", "eval.max_length=32", "eval.tatoeba_languages=[deu]",
        "eval.benchmarks=[xquad_r,tatoeba]", "eval.num_encoders=1",
        "study.bootstrap_samples=200", "study.seeds=[0]", "study.strategies=[x_y,hbt]",
        "study.domain_shift_endpoints=[tatoeba/xx-eng/acc@1]",
    ]
    logs = _submit(cluster, "python -m ray_jobs.study --config configs/local.yaml " + " ".join(map(shlex.quote, overrides)))

    out = head / "out" / "cl-study"
    report = json.loads((out / "report.json").read_text())
    assert report["answer"] in logs
    pace = json.loads((out / "training_pace.json").read_text())
    assert set(pace) == {"x_y-s0", "hbt-s0"} and all(p.get("pairs_per_s", 0) > 0 for p in pace.values()), pace
    assert "data wait over 2 training runs" in logs
    for tag in pace:
        run_dir = out / "runs" / f"cl-study-{tag}"
        result = json.loads((run_dir / "result.json").read_text())
        # Full URIs: the scheme, bucket and endpoint, so any node (or a laptop) can open them.
        assert result["model_dir"].startswith("s3://hbt/") and "endpoint_override=" in result["model_dir"]
        assert result["checkpoint"].startswith("s3://hbt/") and "endpoint_override=" in result["checkpoint"]
        steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
    assert _train_worker_nodes(cluster) == set(cluster.worker_ips)

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("hbt")
    train_runs = client.search_runs([exp.experiment_id], "tags.`hbt.kind` = 'train'")
    assert len(train_runs) == 2 and all(r.info.status == "FINISHED" for r in train_runs)
    for run in train_runs:  # rank 0's step metrics, logged from a worker node, on the head's server
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2]
    # One store: the server's. No run opened a sqlite file of its own anywhere on the head.
    assert [p.relative_to(head) for p in head.rglob("mlflow.db")] == [Path("mlflow.db")]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every logged window, in the order logged (a resumed run logs some steps twice)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _train_until_killed(cluster, s3_server, args: list[str], run_name: str, kill: int, after_step: int):
    """Starts ``hbt train`` on the cluster; once checkpoint ``after_step`` is marked whole, kills worker
    node ``kill``'s raylet. Returns (the running process, the newest whole checkpoint at the kill)."""
    from hbt.train.checkpoints import latest_complete

    log = open(cluster.tmp_root / f"{run_name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hbt.cli", "train", *args, f"run_name={run_name}"],
                            env=cluster.driver_env(**s3_server.env), cwd=PROJECT_ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    run_storage = s3_server.uri(f"runs/{run_name}")
    deadline = time.time() + 300
    while (latest_complete(run_storage) or 0) < after_step:
        assert proc.poll() is None and time.time() < deadline, (cluster.tmp_root / f"{run_name}.log").read_text()[-3000:]
        time.sleep(0.2)
    marked = latest_complete(run_storage)
    cluster.kill_worker(kill, raylet_only=True, wait_dead=False)
    return proc, marked


@pytest.mark.timeout(1500)  # two runs with worker-group restarts: 8 min here on a loaded 2-core machine
def test_lost_nodes_resume_from_the_last_whole_checkpoint_and_elastic_runs_go_on_with_fewer(
        tmp_path, sim_cluster, s3_server, mlflow_server, monkeypatch):
    from hbt.model.tiny import build_tiny_model

    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    head = tmp_path / "head"
    # No dropout: the masks are drawn per worker, so only a dropout-free model has one loss curve
    # for every worker count (the gather across workers is exact).
    model = build_tiny_model(head / "nodrop", dropout=0.0)
    cluster = sim_cluster(head_dirs=[head], workers=[{"cpus": 1}, {"cpus": 1}], env=s3_server.env)
    args = ["-c", "configs/local.yaml", f"output_dir={head / 'out'}", f"model.name_or_path={model}",
            f"tracking.uri={mlflow_server}", f"ray.storage_path={s3_server.uri()}", "ray.cpus_per_worker=1",
            "data.languages=[en,de]", "data.max_questions=32", "batching.global_batch_size=4",
            "model.max_passage_length=32", "model.max_query_length=16", "model.freeze_embeddings=false",
            "train.max_steps=12", "train.warmup_steps=0", "train.log_every=1", "train.checkpoint_every=3",
            "train.lr=1e-3", "train.precision=fp32"]

    # A fixed-size run loses a node after a checkpoint; a new node comes, and the run resumes from it.
    proc, fixed_k = _train_until_killed(cluster, s3_server, [*args, "ray.num_workers=2"], "fixed", 1, 3)
    cluster.add_worker(cpus=1)
    assert proc.wait(timeout=600) == 0, (cluster.tmp_root / "fixed.log").read_text()[-3000:]
    fixed_log = (cluster.tmp_root / "fixed.log").read_text()
    assert f"resumed from checkpoint at step {fixed_k} " in fixed_log, fixed_log[-3000:]
    fixed = _losses(head / "out" / "fixed")
    by_step: dict[int, list[float]] = {}
    for step, loss in fixed:
        by_step.setdefault(step, []).append(loss)
    # Steps trained both before the loss and after the resume came out the same both times.
    redone = {s: v for s, v in by_step.items() if len(v) > 1}
    assert all(max(v) - min(v) < 1e-5 for v in redone.values()), redone
    assert sorted(by_step) == list(range(1, 13))

    # An elastic run loses a node and none comes: it goes on with one worker, on the same global batches.
    proc, elastic_k = _train_until_killed(cluster, s3_server, [*args, "ray.num_workers=[1,2]"], "elastic", 0, 3)
    assert proc.wait(timeout=600) == 0, (cluster.tmp_root / "elastic.log").read_text()[-3000:]
    elastic_log = (cluster.tmp_root / "elastic.log").read_text()
    assert f"resumed from checkpoint at step {elastic_k} " in elastic_log
    elastic = dict(_losses(head / "out" / "elastic"))  # the last loss logged for each step
    assert sorted(elastic) == list(range(1, 13))
    for step in range(1, 13):
        assert elastic[step] == pytest.approx(by_step[step][-1], abs=1e-5), step
    assert len(cluster.alive_node_ips()) == 2  # the head and one worker: it finished on one worker


def test_tune_search_with_trials_on_worker_nodes_completes_its_table(tmp_path, sim_cluster, s3_server,
                                                                      mlflow_server):
    from hbt.model.tiny import build_tiny_model

    head = tmp_path / "head"
    model = build_tiny_model(head / "base-model")
    space = head / "alpha.yaml"
    space.write_text("fixed: {batching.strategy: hybrid}\nparams:\n  batching.alpha: {grid: [0.0, 1.0]}\n")
    cluster = sim_cluster(head_dirs=[head], workers=[{"cpus": 1}, {"cpus": 1}], env=s3_server.env)
    args = ["-c", "configs/local.yaml", f"output_dir={head / 'out'}", f"model.name_or_path={model}", "run_name=cl-tune",
            f"tracking.uri={mlflow_server}", f"ray.storage_path={s3_server.uri()}", "ray.num_workers=1",
            "ray.cpus_per_worker=1", "data.languages=[en,de]", "data.max_questions=16",
            "data.dev_articles=[Warsaw,Geology]", "batching.global_batch_size=4", "model.max_passage_length=32",
            "model.max_query_length=16", "train.max_steps=2", "train.warmup_steps=0", "eval.benchmarks=[xquad_r]",
            "eval.languages=[en,de]", "eval.max_questions=8", "eval.max_length=32", "eval.num_encoders=1",
            "tune.max_concurrent_trials=2"]
    done = subprocess.run([sys.executable, "-m", "hbt.cli", "tune", "--space", str(space), *args],
                          env=cluster.driver_env(**s3_server.env), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    search = head / "out" / "cl-tune"
    trials = json.loads((search / "trials.json").read_text())
    assert sorted(t["params"]["batching.alpha"] for t in trials) == [0.0, 1.0]
    assert all(t["status"] == "TERMINATED" and t["metrics"]["objective"] > 0 for t in trials), trials
    assert all(t["mlflow_run_id"] for t in trials)
    assert (search / "trials.md").read_text().count("| TERMINATED |") == 2
    assert (search / "best_config.yaml").is_file()
    nodes = _train_worker_nodes(cluster)
    assert nodes and nodes <= set(cluster.worker_ips)


def test_the_training_job_demand_scales_the_cluster_up_and_idle_nodes_go(tmp_path, sim_cluster):
    """From no worker node, hbt's own demand (tokenise tasks, two 1-CPU Train workers) adds nodes; idle, they go.

    Ray's fake provider starts its nodes in the head's mount namespace: they share its disk,
    which the run declares (ray.shared_filesystem). Isolation is the other tests' subject.
    """
    import re

    from hbt.model.tiny import build_tiny_model
    from tests.cluster.harness import FakeAutoscaler

    model = build_tiny_model(tmp_path / "model")
    cluster = sim_cluster(workers=[], autoscaler=FakeAutoscaler(worker_cpus=1, max_workers=2,
                                                                 idle_timeout_minutes=0.05))
    assert cluster.alive_node_ips() == [cluster.head_ip]
    done = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "train", "-c", "configs/local.yaml", f"output_dir={tmp_path / 'out'}",
         f"model.name_or_path={model}", "run_name=scaled", "ray.shared_filesystem=true", "ray.num_workers=2",
         "ray.cpus_per_worker=1", "data.languages=[en,de]", "data.max_questions=16", "batching.global_batch_size=4",
         "model.max_passage_length=32", "model.max_query_length=16", "train.max_steps=2", "train.warmup_steps=0"],
        env=cluster.driver_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    # (Ray's driver prints the autoscaler's events on stdout too: the result is the JSON object after them.)
    result = done.stdout[done.stdout.index("{\n"):done.stdout.rindex("}") + 1]
    assert json.loads(result)["metrics"]["step"] == 2

    def total(pattern: str) -> int:
        return sum(int(n) for n in re.findall(pattern, cluster.monitor_log()))

    assert total(r"Adding (\d+) node\(s\) of type") == 2
    deadline = time.monotonic() + 120
    while total(r"Removing (\d+) nodes of type") < 2 or cluster.alive_node_ips() != [cluster.head_ip]:
        assert time.monotonic() < deadline, (cluster.alive_node_ips(), cluster.monitor_log()[-3000:])
        time.sleep(1)
