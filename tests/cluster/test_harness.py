"""The simulated cluster itself: worker nodes really lack the head's disk.

Node loss, job submission and autoscaling are exercised by hbt's own jobs in
test_cluster_jobs.py (kill_worker/add_worker, ``ray job submit`` of the study, the
fake autoscaler scaling for a training run).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import S3Server, SimCluster

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
