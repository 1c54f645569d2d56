"""hbt's jobs on a simulated cluster whose worker nodes share no disk with the head.

The head (0 CPUs) runs the job drivers; an MLflow server and moto's S3 server run
beside it. Each worker node has 1 CPU, its own mount namespace with a private tmpfs
over the head's folders, and its own 127.0.0.x address (tests/cluster/harness.py).
A path handed from one node to another therefore names nothing there: every
hand-off must go through the storage, the MLflow server or Ray's objects.

The jobs run in three lanes side by side, each job on a cluster of its own: the
study job; the node-loss runs; the autoscaling run, then the tune search. They wait on
process start-up, Ray's scheduling and health checks far more than on the CPU, and
one after another they took 12 minutes. A module fixture starts the lanes of the
selected tests; each test waits for its job and checks what the job observed.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hbt.config import PROJECT_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """A real MLflow server (sqlite backend, artifacts on the head's disk); returns (process, URI)."""
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "mlartifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(root / "mlflow-server.log", "wb"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError((root / "mlflow-server.log").read_text()[-2000:])
            time.sleep(1)


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


def _train_worker_ips_from_gcs(cluster) -> set[str]:
    """The node IPs Ray Train's workers ran on (dead actors included), read from the GCS's actor
    table by a driver: for a cluster started without the dashboard, which serves the state API."""
    code = ("import json, ray\nray.init()\nfrom ray._private.state import state\n"
            "ips = sorted({a['Address']['IPAddress'] for a in state.actor_table(None).values()"
            " if a['ActorClassName'] == 'RayTrainWorker'})\nprint('RESULT ' + json.dumps(ips))\n")
    done = cluster.run_driver(code)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:]))


def _isolated_cluster(root: Path, head: Path, s3, dashboard: bool = True):
    """A started cluster: 0-CPU head, two isolated 1-CPU worker nodes (skips where isolation is refused)."""
    from tests.cluster.conftest import skip_unless_isolation_works
    from tests.cluster.harness import SimCluster

    skip_unless_isolation_works()
    return SimCluster(root, head_dirs=[head], workers=[{"cpus": 1}, {"cpus": 1}], env=s3.env,
                      dashboard=dashboard).start()


# ----------------------------------------------------------------------------- the jobs


@dataclass
class _Lab:
    """What the lanes share: moto, the MLflow server (an experiment per job) and a scratch root."""

    root: Path
    s3: Any
    mlflow: str


def _study_job(lab: _Lab, cluster, head: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from hbt.model.tiny import build_tiny_model

    model = build_tiny_model(head / "study-model")  # on the head's disk only
    overrides = [
        f"output_dir={head / 'out'}", f"model.name_or_path={model}", "run_name=cl-study",
        f"tracking.uri={lab.mlflow}", "tracking.experiment=cl-study", f"ray.storage_path={lab.s3.uri()}",
        # One CPU per worker and per node: the two Train workers must sit on different nodes.
        "ray.num_workers=2", "ray.cpus_per_worker=1",
        "data.languages=[en,de]", "eval.languages=[en,de]", "data.max_questions=16",
        "batching.global_batch_size=4", "train.max_steps=2", "train.warmup_steps=0", "train.log_every=1",
        "model.max_passage_length=32", "model.max_query_length=16", "model.freeze_embeddings=false",
        "eval.max_questions=8", "eval.max_length=32",
        "eval.tatoeba_languages=[deu]", "eval.benchmarks=[xquad_r,tatoeba]", "eval.num_encoders=1",
        "study.bootstrap_samples=200", "study.seeds=[0]", "study.strategies=[x_y,hbt]",
        "study.domain_shift_endpoints=[tatoeba/xx-eng/acc@1]",
    ]
    logs = _submit(cluster, "python -m ray_jobs.study --config configs/local.yaml " + " ".join(map(shlex.quote, overrides)))
    client = MlflowClient(lab.mlflow)
    exp = client.get_experiment_by_name("cl-study")
    train_runs = client.search_runs([exp.experiment_id], "tags.`hbt.stage` = 'train'")
    return {"logs": logs, "out": head / "out" / "cl-study", "nodes": _train_worker_nodes(cluster),
            "workers": set(cluster.worker_ips), "train_runs": train_runs,
            "histories": {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
                          for r in train_runs},
            "sqlite_files": sorted(head.rglob("mlflow.db"))}


def _tune_job(lab: _Lab, cluster, head: Path) -> dict[str, Any]:
    from hbt.model.tiny import build_tiny_model

    model = build_tiny_model(head / "tune-model")
    space = head / "alpha.yaml"
    space.write_text("fixed: {batching.strategy: hybrid}\nparams:\n  batching.alpha: {grid: [0.0, 1.0]}\n")
    args = ["-c", "configs/local.yaml", f"output_dir={head / 'out'}", f"model.name_or_path={model}", "run_name=cl-tune",
            f"tracking.uri={lab.mlflow}", "tracking.experiment=cl-tune", f"ray.storage_path={lab.s3.uri()}",
            "ray.num_workers=1", "ray.cpus_per_worker=1", "data.languages=[en,de]", "data.max_questions=16",
            "data.dev_articles=[Warsaw,Geology]", "batching.global_batch_size=4", "model.max_passage_length=32",
            "model.max_query_length=16", "train.max_steps=2", "train.warmup_steps=0", "eval.benchmarks=[xquad_r]",
            "eval.languages=[en,de]", "eval.max_questions=8",
            "eval.max_length=32", "eval.num_encoders=1", "tune.max_concurrent_trials=2"]
    done = subprocess.run([sys.executable, "-m", "hbt.cli", "tune", "--space", str(space), *args],
                          env=cluster.driver_env(**lab.s3.env), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"search": head / "out" / "cl-tune", "nodes": _train_worker_ips_from_gcs(cluster),
            "workers": set(cluster.worker_ips)}


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every logged window, in the order logged (a resumed run logs some steps twice)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _train_until_killed(cluster, lab: _Lab, args: list[str], run_name: str, kill: int, after_step: int):
    """Starts ``hbt train`` on the cluster; once checkpoint ``after_step`` is marked whole, kills worker
    node ``kill``'s raylet. Returns (the running process, the newest whole checkpoint at the kill)."""
    from hbt.train.checkpoints import latest_complete

    log = open(cluster.tmp_root / f"{run_name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hbt.cli", "train", *args, f"run_name={run_name}"],
                            env=cluster.driver_env(**lab.s3.env), cwd=PROJECT_ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    run_storage = lab.s3.uri(f"runs/{run_name}")
    deadline = time.time() + 300
    while (latest_complete(run_storage) or 0) < after_step:
        assert proc.poll() is None and time.time() < deadline, (cluster.tmp_root / f"{run_name}.log").read_text()[-3000:]
        time.sleep(0.2)
    marked = latest_complete(run_storage)
    cluster.kill_worker(kill, raylet_only=True, wait_dead=False)
    return proc, marked


STEPS, EVERY = 8, 4  # two checkpoints a run: the kill comes right after the first


def _node_loss_job(lab: _Lab, cluster, head: Path) -> dict[str, Any]:
    from hbt.model.tiny import build_tiny_model

    # No dropout: the masks are drawn per worker, so only a dropout-free model has one loss curve
    # for every worker count (the gather across workers is exact).
    model = build_tiny_model(head / "nodrop", dropout=0.0)
    args = ["-c", "configs/local.yaml", f"output_dir={head / 'out'}", f"model.name_or_path={model}",
            f"tracking.uri={lab.mlflow}", "tracking.experiment=cl-nodes", f"ray.storage_path={lab.s3.uri()}",
            "ray.cpus_per_worker=1", "data.languages=[en,de]", "data.max_questions=32",
            "batching.global_batch_size=4", "model.max_passage_length=32", "model.max_query_length=16",
            "model.freeze_embeddings=false", f"train.max_steps={STEPS}", "train.warmup_steps=0", "train.log_every=1",
            f"train.checkpoint_every={EVERY}", "train.lr=1e-3", "train.precision=fp32"]
    out: dict[str, Any] = {}
    # A fixed-size run loses a node after a checkpoint; a new node comes, and the run resumes from it.
    proc, out["fixed_k"] = _train_until_killed(cluster, lab, [*args, "ray.num_workers=2"], "fixed", 1, EVERY)
    cluster.add_worker(cpus=1)
    assert proc.wait(timeout=600) == 0, (cluster.tmp_root / "fixed.log").read_text()[-3000:]
    out["fixed_log"] = (cluster.tmp_root / "fixed.log").read_text()
    out["fixed"] = _losses(head / "out" / "fixed")
    # An elastic run loses a node and none comes: it goes on with one worker, on the same global batches.
    proc, out["elastic_k"] = _train_until_killed(cluster, lab, [*args, "ray.num_workers=[1,2]"], "elastic", 0, EVERY)
    assert proc.wait(timeout=600) == 0, (cluster.tmp_root / "elastic.log").read_text()[-3000:]
    out["elastic_log"] = (cluster.tmp_root / "elastic.log").read_text()
    out["elastic"] = _losses(head / "out" / "elastic")
    out["alive"] = cluster.alive_node_ips()
    return out


def _autoscale_job(lab: _Lab) -> dict[str, Any]:
    import re

    from hbt.model.tiny import build_tiny_model
    from tests.cluster.harness import FakeAutoscaler, SimCluster

    root = lab.root / "scaled"
    model = build_tiny_model(root / "model")
    cluster = SimCluster(root / "cluster", workers=[], dashboard=False,
                         autoscaler=FakeAutoscaler(worker_cpus=1, max_workers=2,
                                                  # 12 s: a node that comes up on a busy host and waits a
                                                  # few seconds for the workers it was added for is not idle.
                                                  idle_timeout_minutes=0.2)).start()
    try:
        out: dict[str, Any] = {"alive_before": cluster.alive_node_ips(), "head": cluster.head_ip}
        done = subprocess.run(
            [sys.executable, "-m", "hbt.cli", "train", "-c", "configs/local.yaml", f"output_dir={root / 'out'}",
             f"model.name_or_path={model}", "run_name=scaled", "ray.shared_filesystem=true", "ray.num_workers=2",
             "ray.cpus_per_worker=1", "data.languages=[en,de]", "data.max_questions=16",
             "batching.global_batch_size=4", "model.max_passage_length=32", "model.max_query_length=16",
             "train.max_steps=2", "train.warmup_steps=0"],
            env=cluster.driver_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        out["stdout"] = done.stdout

        def total(pattern: str) -> int:
            return sum(int(n) for n in re.findall(pattern, cluster.monitor_log()))

        out["added"] = total(r"Adding (\d+) node\(s\) of type")
        deadline = time.monotonic() + 120
        while total(r"Removing (\d+) nodes of type") < 2 or cluster.alive_node_ips() != [cluster.head_ip]:
            assert time.monotonic() < deadline, (cluster.alive_node_ips(), cluster.monitor_log()[-3000:])
            time.sleep(1)
        out["removed"] = total(r"Removing (\d+) nodes of type")
        out["alive_after"] = cluster.alive_node_ips()
        return out
    finally:
        cluster.close()


def _isolation_job(lab: _Lab, cluster, head: Path) -> dict[str, Any]:
    """One task pinned to each worker node reports what it sees and writes under the head's paths."""
    import textwrap

    probe_dir = head / "probe"
    probe_dir.mkdir(parents=True)
    (probe_dir / "marker.txt").write_text("only on the head")
    driver = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        import pyarrow.fs as pafs
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        HEAD_OUT, HEAD_TEMP = Path({str(probe_dir)!r}), Path({str(cluster.head_temp_dir)!r})

        @ray.remote(num_cpus=1)
        def probe(uri):
            ip = ray.util.get_node_ip_address()
            seen = (HEAD_OUT / "marker.txt").exists()
            HEAD_OUT.mkdir(parents=True, exist_ok=True)
            (HEAD_OUT / f"from-{{ip}}.txt").write_text(ip)
            fs, root = pafs.FileSystem.from_uri(uri)
            with fs.open_output_stream(f"{{root}}/from-{{ip}}.txt") as f:
                f.write(ip.encode())
            return {{"ip": ip, "marker_seen": seen, "head_temp": os.listdir(HEAD_TEMP),
                     "cache": os.environ["HBT_CACHE"], "tmpdir": os.environ["TMPDIR"]}}

        ray.init()
        workers = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote({lab.s3.uri("probe")!r}) for n in workers]
        print("RESULT " + json.dumps(ray.get(refs, timeout=120)))
    """)
    proc = cluster.run_driver(driver)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    by_ip = {w.ip: w for w in cluster.workers}
    fs = lab.s3.filesystem()
    s3_seen = {}
    for ip in by_ip:
        with fs.open_input_stream(f"{lab.s3.bucket}/probe/from-{ip}.txt") as f:
            s3_seen[ip] = f.read().decode()
    return {"results": results, "worker_ips": list(cluster.worker_ips),
            "own_view": {r["ip"]: by_ip[r["ip"]].view(probe_dir / f"from-{r['ip']}.txt").read_text() for r in results},
            "node_dirs": {ip: (str(w.cache_dir), str(w.tmp_dir)) for ip, w in by_ip.items()},
            "head_files": sorted(p.name for p in probe_dir.iterdir()), "s3": s3_seen}


# ----------------------------------------------------------------------------- the lanes


@dataclass
class _Lanes:
    """The jobs' outcomes, filled by the lanes as they finish."""

    futures: dict[str, Future] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def result(self, job: str) -> dict[str, Any]:
        """The job's observations; its exception (a failed assert, a skip) is raised here, in its test."""
        return self.futures[job].result(timeout=1500)


def _isolated_lane(lab: _Lab, name: str, jobs: list[tuple[str, Callable]], futures: dict[str, Future],
                   dashboard: bool = True) -> None:
    """Runs ``jobs`` one after another on one isolated cluster, each into its own future."""
    head = lab.root / name / "head"
    try:
        cluster = _isolated_cluster(lab.root / name / "cluster", head, lab.s3, dashboard)
    except BaseException as e:  # noqa: BLE001 - a skip or a start failure belongs to each job's test
        for job, _ in jobs:
            futures[job].set_exception(e)
        return
    try:
        for job, fn in jobs:
            try:
                futures[job].set_result(fn(lab, cluster, head))
            except BaseException as e:  # noqa: BLE001 - re-raised in the job's test
                futures[job].set_exception(e)
    finally:
        cluster.close()


def _single_lane(lab: _Lab, job: str, fn: Callable, futures: dict[str, Future]) -> None:
    try:
        futures[job].set_result(fn(lab))
    except BaseException as e:  # noqa: BLE001 - re-raised in the job's test
        futures[job].set_exception(e)


# Which job each test checks (tests not selected do not run their job).
JOB_OF_TEST = {
    "test_worker_nodes_do_not_share_the_heads_disk": "isolation",
    "test_study_job_on_isolated_nodes_reports_on_the_head": "study",
    "test_tune_search_with_trials_on_worker_nodes_completes_its_table": "tune",
    "test_lost_nodes_resume_from_the_last_whole_checkpoint_and_elastic_runs_go_on_with_fewer": "nodes",
    "test_the_training_job_demand_scales_the_cluster_up_and_idle_nodes_go": "scale",
}


@pytest.fixture(scope="module")
def lanes(request, tmp_path_factory):
    """Starts the lanes of the selected tests side by side; closes everything after the module."""
    from tests.cluster.harness import S3Server

    wanted = {JOB_OF_TEST[i.originalname] for i in request.session.items
              if i.module is request.module and i.originalname in JOB_OF_TEST}
    root = tmp_path_factory.mktemp("lanes")
    s3 = S3Server.start()
    mlflow_proc, mlflow_uri = _start_mlflow_server(root / "mlflow")
    lab = _Lab(root, s3, mlflow_uri)
    with pytest.MonkeyPatch.context() as mp:
        # The checks read S3 from this process (moto's credentials) and the job API with auth off.
        for k, v in {**s3.env, "RAY_AUTH_MODE": "disabled"}.items():
            mp.setenv(k, v)
        state = _Lanes({job: Future() for job in wanted})

        def lane_c() -> None:  # the autoscaling run; then, on an isolated cluster, the disk probe and the search
            if "scale" in wanted:
                _single_lane(lab, "scale", _autoscale_job, state.futures)
            jobs = [(j, f) for j, f in (("isolation", _isolation_job), ("tune", _tune_job)) if j in wanted]
            if jobs:  # neither needs the job or state API: no dashboard
                _isolated_lane(lab, "c", jobs, state.futures, False)

        pool = ThreadPoolExecutor(max_workers=3)
        if "study" in wanted:
            pool.submit(_isolated_lane, lab, "a", [("study", _study_job)], state.futures)
        if "nodes" in wanted:
            # hbt train straight from the head: no job API, no state API, so no dashboard.
            pool.submit(_isolated_lane, lab, "b", [("nodes", _node_loss_job)], state.futures, False)
        pool.submit(lane_c)
        try:
            yield state
        finally:
            pool.shutdown(wait=True)
            mlflow_proc.terminate()
            mlflow_proc.wait(timeout=30)
            s3.stop()


# ----------------------------------------------------------------------------- the checks


@pytest.mark.timeout(1500)
def test_worker_nodes_do_not_share_the_heads_disk(lanes):
    """The harness itself: a file is invisible across nodes in both directions; S3 is what they share."""
    seen = lanes.result("isolation")
    assert seen["worker_ips"] == ["127.0.0.2", "127.0.0.3"]
    results = seen["results"]
    assert sorted(r["ip"] for r in results) == ["127.0.0.2", "127.0.0.3"]
    for r in results:
        assert not r["marker_seen"], "a worker saw a file the test wrote on the head's disk"
        assert r["head_temp"] == [], "a worker saw the head's Ray session dir"
        assert (r["cache"], r["tmpdir"]) == tuple(seen["node_dirs"][r["ip"]])
        # The worker's write landed on its own disk only...
        assert seen["own_view"][r["ip"]] == r["ip"]
    # ...never on the head's.
    assert seen["head_files"] == ["marker.txt"]
    # S3 is the one storage they share: what the workers wrote, the head reads back.
    assert seen["s3"] == {"127.0.0.2": "127.0.0.2", "127.0.0.3": "127.0.0.3"}


@pytest.mark.timeout(1500)
def test_study_job_on_isolated_nodes_reports_on_the_head(lanes):
    seen = lanes.result("study")
    out, logs = seen["out"], seen["logs"]
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
    assert seen["nodes"] == seen["workers"]  # the Train workers sat on both isolated nodes
    train_runs = seen["train_runs"]
    assert len(train_runs) == 2 and all(r.info.status == "FINISHED" for r in train_runs)
    # Rank 0's step metrics, logged from a worker node, on the head's server.
    assert all(steps == [1, 2] for steps in seen["histories"].values()), seen["histories"]
    # One store: the server's. No run opened a sqlite file of its own anywhere on the head.
    assert seen["sqlite_files"] == []


@pytest.mark.timeout(1500)
def test_tune_search_with_trials_on_worker_nodes_completes_its_table(lanes):
    seen = lanes.result("tune")
    search = seen["search"]
    trials = json.loads((search / "trials.json").read_text())
    assert sorted(t["params"]["batching.alpha"] for t in trials) == [0.0, 1.0]
    assert all(t["status"] == "TERMINATED" and t["metrics"]["objective"] > 0 for t in trials), trials
    assert all(t["mlflow_run_id"] for t in trials)
    assert (search / "trials.md").read_text().count("| TERMINATED |") == 2
    assert (search / "best_config.yaml").is_file()
    assert seen["nodes"] and seen["nodes"] <= seen["workers"]


@pytest.mark.timeout(1500)
def test_lost_nodes_resume_from_the_last_whole_checkpoint_and_elastic_runs_go_on_with_fewer(lanes):
    seen = lanes.result("nodes")
    assert f"resumed from checkpoint at step {seen['fixed_k']} " in seen["fixed_log"], seen["fixed_log"][-3000:]
    by_step: dict[int, list[float]] = {}
    for step, loss in seen["fixed"]:
        by_step.setdefault(step, []).append(loss)
    # Steps trained both before the loss and after the resume came out the same both times.
    redone = {s: v for s, v in by_step.items() if len(v) > 1}
    assert all(max(v) - min(v) < 1e-5 for v in redone.values()), redone
    assert sorted(by_step) == list(range(1, STEPS + 1))

    assert f"resumed from checkpoint at step {seen['elastic_k']} " in seen["elastic_log"]
    elastic = dict(seen["elastic"])  # the last loss logged for each step
    assert sorted(elastic) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert elastic[step] == pytest.approx(by_step[step][-1], abs=1e-5), step
    assert len(seen["alive"]) == 2  # the head and one worker: it finished on one worker


@pytest.mark.timeout(1500)
def test_the_training_job_demand_scales_the_cluster_up_and_idle_nodes_go(lanes):
    """From no worker node, hbt's own demand (two 1-CPU Train workers) adds two nodes; idle, they go.

    Ray's fake provider starts its nodes in the head's mount namespace: they share its disk,
    which the run declares (ray.shared_filesystem). Isolation is the other tests' subject.
    """
    seen = lanes.result("scale")
    assert seen["alive_before"] == [seen["head"]]
    stdout = seen["stdout"]
    # (Ray's driver prints the autoscaler's events on stdout too: the result is the JSON object after them.)
    result = stdout[stdout.index("{\n"):stdout.rindex("}") + 1]
    assert json.loads(result)["metrics"]["step"] == 2
    # Two 1-CPU workers need two nodes. On a busy host the fake provider can take seconds to list its
    # nodes, and the autoscaler may queue one more meanwhile (seen: 13 s, "Adding 2", then "Adding 1"):
    # the demand's two at least, and every node gone once idle.
    assert seen["added"] >= 2 and seen["removed"] >= 2 and seen["alive_after"] == [seen["head"]], seen
