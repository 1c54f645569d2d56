"""The simulated cluster itself: worker nodes really lack the head's disk, jobs run, autoscaling works."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    MONITOR_ADDED,
    MONITOR_REMOVED,
    RAY_BIN,
    FakeAutoscaler,
    S3Server,
    SimCluster,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]


def _result(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a driver printed after ``RESULT``."""
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_worker_nodes_do_not_share_the_heads_disk(sim_cluster, s3_server: S3Server, tmp_path: Path):
    head_out = tmp_path / "head"
    cluster: SimCluster = sim_cluster(head_dirs=[head_out], workers=[{"cpus": 1}, {"cpus": 1}])
    assert cluster.worker_ips == ["127.0.0.2", "127.0.0.3"]
    (head_out / "marker.txt").write_text("only on the head")

    # One task pinned to each worker node: what it sees and writes under the head's paths.
    driver = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        import pyarrow.fs as pafs
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        HEAD_OUT, HEAD_TEMP = Path({str(head_out)!r}), Path({str(cluster.head_temp_dir)!r})

        @ray.remote(num_cpus=1)
        def probe(uri):
            ip = ray.util.get_node_ip_address()
            seen = (HEAD_OUT / "marker.txt").exists()
            (HEAD_OUT / f"from-{{ip}}.txt").write_text(ip)
            fs, root = pafs.FileSystem.from_uri(uri)
            with fs.open_output_stream(f"{{root}}/from-{{ip}}.txt") as f:
                f.write(ip.encode())
            return {{"ip": ip, "marker_seen": seen, "head_temp": os.listdir(HEAD_TEMP),
                     "cache": os.environ["HBT_CACHE"], "tmpdir": os.environ["TMPDIR"]}}

        ray.init()
        workers = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote({s3_server.uri()!r}) for n in workers]
        print("RESULT " + json.dumps(ray.get(refs, timeout=120)))
    """)
    results = _result(cluster.run_driver(driver))

    assert sorted(r["ip"] for r in results) == ["127.0.0.2", "127.0.0.3"]
    by_ip = {w.ip: w for w in cluster.workers}
    for r in results:
        node = by_ip[r["ip"]]
        assert not r["marker_seen"], "a worker saw a file the test wrote on the head's disk"
        assert r["head_temp"] == [], "a worker saw the head's Ray session dir"
        assert r["cache"] == str(node.cache_dir) and r["tmpdir"] == str(node.tmp_dir)
        # The worker's write landed on its own disk only...
        assert node.view(head_out / f"from-{r['ip']}.txt").read_text() == r["ip"]
    # ...never on the head's.
    assert sorted(p.name for p in head_out.iterdir()) == ["marker.txt"]
    # S3 is the one storage they share: what the workers wrote, the head reads back.
    fs = s3_server.filesystem()
    for ip in ("127.0.0.2", "127.0.0.3"):
        with fs.open_input_stream(f"{s3_server.bucket}/runs/from-{ip}.txt") as f:
            assert f.read() == ip.encode()


def test_node_loss_and_replacement(sim_cluster):
    cluster: SimCluster = sim_cluster(workers=[{"cpus": 1}, {"cpus": 1}])
    lost = cluster.kill_worker(0)  # SIGKILL: the GCS notices through missed health checks
    assert not lost.alive and lost.ip not in cluster.alive_node_ips()
    assert cluster.worker_ips == ["127.0.0.3"]
    new = cluster.add_worker(cpus=2)
    assert new.ip == "127.0.0.4" and cluster.worker_ips == ["127.0.0.3", "127.0.0.4"]
    cluster.kill_worker(1, raylet_only=True)  # a raylet crash takes its node down
    assert cluster.worker_ips == ["127.0.0.4"]
    assert set(cluster.alive_node_ips()) == {cluster.head_ip, "127.0.0.4"}


def test_ray_job_submit_runs_on_the_isolated_cluster(sim_cluster, tmp_path: Path):
    cluster: SimCluster = sim_cluster(workers=[{"cpus": 1}, {"cpus": 1}])
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    # The working dir travels through the GCS: the head's driver and each worker node unpack
    # their own copy, so the remote task imports the module on a disk that never saw job_dir.
    (job_dir / "jobmod.py").write_text(textwrap.dedent("""
        import ray

        @ray.remote(num_cpus=1)
        def where():
            import jobmod  # resolvable on the worker only through the shipped working dir
            return ray.util.get_node_ip_address(), jobmod.GREETING

        GREETING = "hello from the working dir"

        def main():
            ray.init()
            ips = sorted({ip for ip, _ in ray.get([where.remote() for _ in range(4)])})
            print("JOB_OK", ips, GREETING)
    """))
    cmd = [str(RAY_BIN), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(job_dir),
           "--", "python", "-c", "import jobmod; jobmod.main()"]
    deadline = time.monotonic() + 120
    while True:
        proc = subprocess.run(cmd, env=cluster.driver_env(), capture_output=True, text=True, timeout=180)
        out = proc.stdout + proc.stderr
        # A fresh head's job agent can take a few seconds to register with the dashboard.
        if "No available agent" not in out or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, out[-5000:]
    assert "JOB_OK" in out and "hello from the working dir" in out, out[-5000:]
    assert "succeeded" in out, out[-5000:]
    ran_on = out[out.index("JOB_OK"):].splitlines()[0]
    assert "127.0.0.2" in ran_on or "127.0.0.3" in ran_on, ran_on


def test_fake_autoscaler_adds_and_removes_a_node(sim_cluster):
    # The fake provider starts its nodes inside the head's monitor, on the head's disk: this
    # only checks scaling decisions, not isolation.
    cluster: SimCluster = sim_cluster(workers=[], autoscaler=FakeAutoscaler(worker_cpus=1, max_workers=2,
                                                                             idle_timeout_minutes=0.05))
    assert cluster.alive_node_ips() == [cluster.head_ip]
    driver = textwrap.dedent("""
        import json, ray

        @ray.remote(num_cpus=1)
        def node():
            return ray.get_runtime_context().get_node_id()

        ray.init()
        head = ray.get_runtime_context().get_node_id()
        print("RESULT " + json.dumps({"head": head, "task": ray.get(node.remote(), timeout=120)}))
    """)
    started = time.monotonic()
    ids = _result(cluster.run_driver(driver, timeout_s=180))
    assert ids["task"] != ids["head"]  # the head has 0 CPUs: only an added node could run it
    log = cluster.wait_for_monitor_log(MONITOR_ADDED.format(n=1))
    assert "ray.worker.cpu" in log
    cluster.wait_for_monitor_log(MONITOR_REMOVED.format(n=1), timeout_s=120)
    deadline = time.monotonic() + 60
    while cluster.alive_node_ips() != [cluster.head_ip]:
        assert time.monotonic() < deadline, f"the idle node is still alive: {cluster.alive_node_ips()}"
        time.sleep(0.5)
    print(f"scale up and down took {time.monotonic() - started:.1f}s")
