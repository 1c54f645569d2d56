"""A simulated multi-node Ray cluster on one machine whose worker nodes do not share the head's disk.

The head runs in the host's mount namespace, like the machine a job is submitted from. Each
worker node runs ``ray start --block`` inside its own mount namespace (``unshare -m``) with a
private tmpfs over the head's directories (the output dirs a test names, the head's Ray temp
dir, TMPDIR and ``HBT_CACHE``) and over its own node dir (its Ray temp dir, ``TMPDIR`` and
``HBT_CACHE``). A file one node writes under those paths is therefore invisible to every other
node: only the GCS (TCP) and moto's S3 server (TCP) are shared, as on a real cluster.

Addresses: everything is reached through 127.0.0.1 (GCS, dashboard, moto). Worker k has node
IP 127.0.0.k (k >= 2). The head's node IP is whatever Ray picks, the host's own address:
``ray start`` rewrites 127.0.0.1 to it (and binds its servers to 0.0.0.0).

Every node is started in a new session, and cleanup signals only the processes of sessions
this module started: never ``ray stop``, which would stop every Ray on the host. A janitor
process per cluster does the same should pytest itself be killed.

Layout (short paths: Ray's unix socket paths must stay under 108 bytes)::

    /tmp/hbtc-XXXXXXXX/h      head Ray temp dir (session_latest/logs/monitor.log lives here)
    /tmp/hbtc-XXXXXXXX/ht     head TMPDIR
    /tmp/hbtc-XXXXXXXX/hc     head HBT_CACHE
    /tmp/hbtc-XXXXXXXX/w2     mount point of node 127.0.0.2's tmpfs: t/ (Ray temp), tmp/, cache/
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import psutil

RAY_BIN = Path(sys.executable).parent / "ray"
HEAD_IP = "127.0.0.1"
# Worker node k gets 127.0.0.k: every 127/8 address is local on Linux without configuration.
FIRST_WORKER_HOST = 2
BUCKET = "hbt"

# moto accepts any credentials. Every node gets these, so a test cluster can reach moto and
# real AWS credentials from the caller's environment never leak into one.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

# Lines the v1 autoscaler's monitor writes to <head temp>/session_latest/logs/monitor.log
# (event summaries from ray/autoscaler/_private/{node_launcher,autoscaler}.py, prefixed with
# ":event_summary:"). Node type names are appended, e.g. "Adding 1 node(s) of type ray.worker.cpu.".
MONITOR_ADDED = "Adding {n} node(s) of type"
MONITOR_REMOVED = "Removing {n} nodes of type"
MONITOR_TERMINATING = "StandardAutoscaler: Terminating the node with id"


class ClusterError(RuntimeError):
    """A node failed to start or to reach the state a caller waited for."""


# --------------------------------------------------------------------------- probes


# A private mount namespace whose mounts never propagate back to the host. Without root, a
# user namespace that maps the caller to root permits the same (where the kernel allows
# unprivileged user namespaces); the node's files on shared paths still belong to the caller.
UNSHARE = ("unshare", "-m", "--propagation", "private")
UNSHARE_USERNS = ("unshare", "--map-root-user", "-m", "--propagation", "private")


def _probe_unshare(prefix: Sequence[str]) -> str | None:
    """Why ``prefix`` cannot mount a private tmpfs, or None when it can."""
    probe = tempfile.mkdtemp(prefix="hbtc-probe-", dir="/tmp")
    try:
        done = subprocess.run(
            [*prefix, "sh", "-c", f"mount -t tmpfs hbtc-probe {shlex.quote(probe)} && touch {shlex.quote(probe)}/x"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{' '.join(prefix)}` failed to run: {e}"
    finally:
        leaked = os.path.exists(os.path.join(probe, "x"))
        shutil.rmtree(probe, ignore_errors=True)
    if done.returncode != 0:
        return f"`{' '.join(prefix)}` + a tmpfs mount not permitted: {done.stderr.strip() or done.returncode}"
    if leaked:
        return "a tmpfs mounted inside `unshare -m` leaked into the host's mount namespace"
    return None


@cache
def _isolation() -> tuple[tuple[str, ...] | None, str]:
    if sys.platform != "linux":
        return None, "isolated worker nodes need Linux mount namespaces"
    if shutil.which("unshare") is None:
        return None, "the unshare binary (util-linux) is not installed"
    problem = _probe_unshare(UNSHARE)
    if problem is None:
        return UNSHARE, ""
    if _probe_unshare(UNSHARE_USERNS) is None:
        return UNSHARE_USERNS, ""
    return None, problem


def unshare_problem() -> str | None:
    """Why worker nodes cannot get a private mount namespace here, or None when they can.

    Probed once per process: ``unshare -m`` (else, without root, ``unshare --map-root-user
    -m``) plus a tmpfs mount inside it; unprivileged containers usually refuse both.
    """
    prefix, problem = _isolation()
    return None if prefix else problem


def unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` command prefix worker nodes start under (see :func:`unshare_problem`)."""
    prefix, problem = _isolation()
    if prefix is None:
        raise ClusterError(problem)
    return prefix


def loopback_usable(ip: str) -> bool:
    """Whether this host can bind ``ip`` (127.0.0.k beyond .1 works on Linux, not on macOS)."""
    with socket.socket() as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- ports


class _PortPool:
    """Hands out free TCP ports, never the same one twice in this process.

    Ports come from below the kernel's ephemeral range: a port the OS assigns by itself (a
    client socket, a Ray worker's) can then never grab one picked here before its Ray process
    binds it. They also stay above Ray's defaults (6379, 8265, 10001-19999) so another Ray on
    the host keeps its own ports.
    """

    LOW = 20000

    def __init__(self) -> None:
        self._given: set[int] = set()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._lo, self._hi = self._range()

    def _range(self) -> tuple[int, int]:
        try:
            eph_lo, eph_hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        except (OSError, ValueError):
            eph_lo, eph_hi = 32768, 60999
        below = (self.LOW, eph_lo)  # half-open
        above = (max(eph_hi + 1, self.LOW), 65536)
        lo, hi = max(below, above, key=lambda r: r[1] - r[0])
        if hi - lo < 2000:
            raise ClusterError(f"no room for test ports outside the ephemeral range {eph_lo}-{eph_hi}")
        return lo, hi

    @staticmethod
    def _free(port: int) -> bool:
        # No SO_REUSEADDR: a port someone still holds (even in TIME_WAIT) counts as taken.
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                return False
        return True

    def take(self, count: int = 1) -> list[int]:
        """``count`` distinct free ports (thread-safe: clusters may start side by side)."""
        with self._lock:
            return self._take(count)

    def _take(self, count: int) -> list[int]:
        out: list[int] = []
        for _ in range(50 * count + 100):
            if len(out) == count:
                return out
            port = self._rng.randrange(self._lo, self._hi)
            if port not in self._given and self._free(port):
                self._given.add(port)
                out.append(port)
        raise ClusterError(f"could not find {count} free ports in {self._lo}-{self._hi}")

    def take_range(self, size: int) -> tuple[int, int]:
        """A contiguous run of ``size`` free ports, as (first, last) inclusive."""
        with self._lock:
            return self._take_range(size)

    def _take_range(self, size: int) -> tuple[int, int]:
        for _ in range(200):
            first = self._rng.randrange(self._lo, self._hi - size)
            run = range(first, first + size)
            if all(p not in self._given for p in run) and all(self._free(p) for p in run):
                self._given.update(run)
                return first, first + size - 1
        raise ClusterError(f"could not find {size} contiguous free ports in {self._lo}-{self._hi}")


PORTS = _PortPool()


def _node_port_flags(worker_ports: int) -> list[str]:
    """The per-node port flags, every one picked free (a default could be held by another Ray)."""
    nm, om, agent, agent_grpc, runtime_env, metrics = PORTS.take(6)
    first, last = PORTS.take_range(worker_ports)
    return [f"--node-manager-port={nm}", f"--object-manager-port={om}",
            f"--min-worker-port={first}", f"--max-worker-port={last}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]


# --------------------------------------------------------------------------- processes


# Run by a janitor process per cluster, in its own session. It learns the session id of each
# node (and the cluster's /tmp dir) from stdin; if stdin closes without "done" (pytest was
# killed: a hard timeout, ^C twice), it SIGKILLs every process left in those sessions and
# deletes the dir, so no cluster outlives its test.
# Ray's own fate-sharing is not enough: a node's agents outlive a SIGKILLed `ray start`.
_JANITOR = """
import os, shutil, signal, sys, time
sids, dirs = set(), set()
for line in sys.stdin:
    cmd, _, arg = line.rstrip("\\n").partition(" ")
    if cmd == "done":
        sys.exit(0)
    if cmd == "dir":
        dirs.add(arg)
    else:
        (sids.add if cmd == "add" else sids.discard)(int(arg))
for _ in range(3):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) in sids:
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
for d in dirs:
    shutil.rmtree(d, ignore_errors=True)
"""


class _Janitor:
    """Kills this cluster's sessions should the pytest process die before :meth:`SimCluster.close`."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _JANITOR], stdin=subprocess.PIPE, text=True,
                                      start_new_session=True)

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def watch(self, sid: int) -> None:
        """Adds a session to kill on our death."""
        self._send(f"add {sid}")

    def remove_later(self, path: Path) -> None:
        """Adds a directory to delete on our death."""
        self._send(f"dir {path}")

    def forget(self, sid: int) -> None:
        """Drops a session already ended (its id may be reused)."""
        self._send(f"forget {sid}")

    def dismiss(self) -> None:
        """Ends the janitor without it killing anything."""
        try:
            self._send("done")
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _session_procs(leader: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Every live process in the session ``leader`` started (its id is the leader's pid).

    A session outlives its leader, so this also finds what a dead ``ray start`` left behind
    (Ray's per-worker process groups stay in the session). Once the leader is reaped its pid
    may be reused (pid_max can be as low as 32768): a live session leader with that pid is
    then someone else's, and nothing is returned rather than risk a stranger's processes.
    """
    sid = leader.pid
    if leader.poll() is not None:
        with contextlib.suppress(OSError):
            if os.getsid(sid) == sid:
                return []
    procs = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                procs.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return procs


def end_sessions(leaders: Sequence[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """Ends the sessions the ``leaders`` lead (each started with ``start_new_session=True``).

    SIGTERM goes to the leaders alone (``ray start --block`` then stops its node's processes
    in order, draining for up to 30 s, hence the cap); after ``grace_s`` every process left in
    those sessions, and every descendant that left one, gets SIGKILL. ``grace_s=0`` kills at
    once, like a machine that vanishes. No other process on the host is signalled.
    """
    trees: list[psutil.Process] = []
    for leader in leaders:
        # Only while the leader is our unreaped child does its pid surely still name it.
        if leader.poll() is None:
            with contextlib.suppress(psutil.Error):
                trees += psutil.Process(leader.pid).children(recursive=True)
    if grace_s > 0:
        for leader in leaders:
            if leader.poll() is None:
                leader.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for leader in leaders:
            try:
                leader.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    doomed = {p.pid: p for p in trees}
    for leader in leaders:
        doomed.update((p.pid, p) for p in _session_procs(leader))
    for proc in doomed.values():
        try:
            proc.kill()  # psutil checks that the pid still names the same process
        except psutil.Error:
            pass
    psutil.wait_procs(list(doomed.values()), timeout=10)
    for leader in leaders:
        if leader.poll() is None:
            leader.kill()
        leader.wait(timeout=10)


# --------------------------------------------------------------------------- S3


@dataclasses.dataclass
class S3Server:
    """moto's S3 server, running in a thread of the pytest process.

    Attributes:
        port: the TCP port on 127.0.0.1.
        bucket: a bucket created at start.
    """

    port: int
    bucket: str = BUCKET
    _server: Any = None

    @property
    def endpoint(self) -> str:
        """The HTTP endpoint, for boto3's ``endpoint_url``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to reach this server (dummy credentials)."""
        return dict(FAKE_AWS_ENV)

    def uri(self, prefix: str = "runs") -> str:
        """A pyarrow filesystem URI under the bucket, e.g. ``s3://hbt/runs?endpoint_override=...``."""
        return (f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}"
                "&scheme=http&region=us-east-1")

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this server (paths then start with the bucket)."""
        from pyarrow import fs

        return fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               scheme="http", endpoint_override=f"127.0.0.1:{self.port}")

    def boto3_client(self) -> Any:
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    @classmethod
    def start(cls, bucket: str = BUCKET) -> S3Server:
        """Starts a server on a free port and creates ``bucket``."""
        from moto.server import ThreadedMotoServer

        (port,) = PORTS.take(1)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        s3 = cls(port=port, bucket=bucket, _server=server)
        s3.boto3_client().create_bucket(Bucket=bucket)
        return s3

    def stop(self) -> None:
        """Stops the server (its state is lost)."""
        if self._server is not None:
            self._server.stop()
            self._server = None


# --------------------------------------------------------------------------- cluster


@dataclasses.dataclass(frozen=True)
class FakeAutoscaler:
    """Ray's fake multi-node autoscaler for the head (``RAY_FAKE_CLUSTER=1``).

    Its worker nodes are started by the head's monitor process as plain local Ray nodes: they
    SHARE the head's disk (no mount namespace) and its IP. Use it to test that nodes are
    added and removed, not for storage isolation.

    Attributes:
        worker_cpus: CPUs of each autoscaled worker node.
        min_workers: workers kept even when idle.
        max_workers: upper bound on workers.
        idle_timeout_minutes: how long a worker may idle before removal (a float: 0.05 is 3 s).
        worker_object_store_bytes: object store of each worker (Ray's minimum is 75 MiB).
    """

    worker_cpus: int = 1
    min_workers: int = 0
    max_workers: int = 2
    idle_timeout_minutes: float = 0.05
    worker_object_store_bytes: int = 80 * 1024 * 1024

    def config(self, gcs_address: str) -> dict[str, Any]:
        """The cluster config the v1 monitor reads as is (it fills in no defaults, so all keys
        of Ray's fake_multi_node/example.yaml, which the wheel lacks, are spelled out)."""
        return {
            "cluster_name": "hbt-fake",
            "max_workers": self.max_workers,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": gcs_address,
                # The fake provider reports node ids as IPs; these tell the monitor so.
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                "ray.worker.cpu": {
                    "resources": {"CPU": self.worker_cpus,
                                  "object_store_memory": self.worker_object_store_bytes},
                    "node_config": {},
                    "min_workers": self.min_workers,
                    "max_workers": self.max_workers,
                },
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }


@dataclasses.dataclass
class WorkerNode:
    """One isolated worker node.

    Attributes:
        ip: its node IP (127.0.0.k).
        cpus: its CPU count.
        root: the host path its private tmpfs is mounted over (empty as seen from the host).
        proc: the ``unshare ... ray start --block`` process, leader of the node's session.
        log: stdout and stderr of ``ray start`` (on the host).
    """

    ip: str
    cpus: int
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    ended: bool = False  # its session was ended (by kill_worker or close)

    @property
    def temp_dir(self) -> Path:
        """Its Ray temp dir (inside its tmpfs)."""
        return self.root / "t"

    @property
    def tmp_dir(self) -> Path:
        """Its TMPDIR (inside its tmpfs)."""
        return self.root / "tmp"

    @property
    def cache_dir(self) -> Path:
        """Its HBT_CACHE (inside its tmpfs)."""
        return self.root / "cache"

    @property
    def alive(self) -> bool:
        """Whether its ``ray start`` still runs."""
        return self.proc.poll() is None

    def view(self, path: str | os.PathLike[str]) -> Path:
        """Where the host sees ``path`` of this node's own disk, while the node is alive.

        ``/proc/<pid>/root`` walks the process's mount namespace, so a test can check what a
        worker wrote on its private tmpfs without running code on it. An absolute symlink met
        on the way resolves in the host's namespace, though: see :meth:`session_dir`.
        """
        return Path(f"/proc/{self.proc.pid}/root") / os.path.abspath(path).lstrip("/")

    def session_dir(self) -> Path | None:
        """The host's view of this node's Ray session dir (not via ``session_latest``, an
        absolute symlink that would resolve on the host), or None before Ray created it."""
        try:
            sessions = sorted(p for p in self.view(self.temp_dir).iterdir()
                              if p.name.startswith("session_2") and p.is_dir())
        except OSError:
            return None
        return sessions[-1] if sessions else None


class SimCluster:
    """A head (0 CPUs, host namespace, reached at 127.0.0.1) plus isolated workers on 127.0.0.2+.

    Use as a context manager, or call :meth:`start` and :meth:`close`.

    Args:
        tmp_root: where logs (and the head's dirs a test names) go; a pytest ``tmp_path``.
        head_dirs: head directories hidden from workers (each worker sees an empty private
            dir at the same path, e.g. ``tmp_path / "head"``); created if missing.
        workers: one mapping of :meth:`add_worker` arguments per worker node started with the
            cluster, e.g. ``{"cpus": 1}`` or ``{"cpus": 2, "resources": {"big": 1}}``.
        env: extra environment for every node (after the defaults; ``HBT_CACHE`` and
            ``TMPDIR`` are always set per node).
        autoscaler: run Ray's fake autoscaler on the head (its nodes share the head's disk).
        object_store_bytes: object store of each node (Ray's minimum is 75 MiB).
        worker_ports: size of each node's worker port range (one port per worker process).
        timeout_s: how long to wait for a node to come up.
        dashboard: start the head's dashboard (the job API and the state API need it; its dozen
            processes cost a busy host CPU that jobs started without them can use).
    """

    def __init__(
        self,
        tmp_root: str | os.PathLike[str],
        head_dirs: Iterable[str | os.PathLike[str]] = (),
        workers: Sequence[Mapping[str, Any]] = ({"cpus": 1}, {"cpus": 1}),
        env: Mapping[str, str] | None = None,
        *,
        autoscaler: FakeAutoscaler | None = None,
        object_store_bytes: int = 80 * 1024 * 1024,
        worker_ports: int = 100,
        timeout_s: float = 120.0,
        dashboard: bool = True,
    ) -> None:
        self.tmp_root = Path(tmp_root)
        self.head_dirs = [Path(d).resolve() for d in head_dirs]
        self._worker_specs = [dict(w) for w in workers]
        self._extra_env = dict(env or {})
        self.autoscaler = autoscaler
        self.object_store_bytes = object_store_bytes
        self.worker_ports = worker_ports
        self.timeout_s = timeout_s
        self.dashboard = dashboard
        self.workers: list[WorkerNode] = []
        self.head: subprocess.Popen[bytes] | None = None
        self.short_root: Path | None = None
        self.gcs_port = 0
        self.dashboard_port = 0
        self.client_port = 0
        self._next_host = FIRST_WORKER_HOST
        # The head's node IP, as Ray picks it: `ray start` rewrites 127.0.0.1 to the host's
        # own address (its servers bind 0.0.0.0, so 127.0.0.1:<port> still reaches them).
        self.head_ip = ""
        self._gcs: Any = None
        self._janitor: _Janitor | None = None

    # ---- addresses and paths

    @property
    def address(self) -> str:
        """The GCS address, ``127.0.0.1:<port>`` (for ``ray.init`` and ``ray start``)."""
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard / job API, for ``ray job submit --address``."""
        return f"http://{HEAD_IP}:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        """The Ray Client address (``ray://``)."""
        return f"ray://{HEAD_IP}:{self.client_port}"

    @property
    def worker_ips(self) -> list[str]:
        """IPs of the worker nodes still running."""
        return [w.ip for w in self.workers if w.alive]

    @property
    def head_temp_dir(self) -> Path:
        """The head's Ray temp dir."""
        assert self.short_root is not None, "cluster not started"
        return self.short_root / "h"

    @property
    def head_tmp(self) -> Path:
        """The head's TMPDIR."""
        assert self.short_root is not None, "cluster not started"
        return self.short_root / "ht"

    @property
    def head_cache(self) -> Path:
        """The head's HBT_CACHE."""
        assert self.short_root is not None, "cluster not started"
        return self.short_root / "hc"

    @property
    def log_dir(self) -> Path:
        """Where ``ray start`` output goes and node logs are copied at close."""
        return self.tmp_root / "logs"

    def head_log(self, name: str) -> str:
        """A file of the head's ``session_latest/logs`` ('' when absent); after :meth:`close`,
        of the copy under :attr:`log_dir`."""
        logs = (self.head_temp_dir / "session_latest" / "logs") if self.short_root else self.log_dir / "head"
        try:
            return (logs / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def monitor_log(self) -> str:
        """The autoscaler monitor's log (monitor.log, then monitor.out and monitor.err)."""
        return "".join(self.head_log(n) for n in ("monitor.log", "monitor.out", "monitor.err"))

    def wait_for_monitor_log(self, text: str, count: int = 1, timeout_s: float = 60.0) -> str:
        """Waits until ``text`` occurs ``count`` times in :meth:`monitor_log`; returns the log."""
        deadline = time.monotonic() + timeout_s
        while True:
            log = self.monitor_log()
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise ClusterError(f"{text!r} x{count} not in the monitor log after {timeout_s}s:\n{log[-3000:]}")
            time.sleep(0.5)

    # ---- environment

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(FAKE_AWS_ENV)
        # An HTTP proxy in the caller's environment must not capture loopback traffic
        # (dashboard, moto); Ray's own gRPC channels ignore proxies anyway.
        inherited = os.environ.get("NO_PROXY") or os.environ.get("no_proxy")
        no_proxy = ",".join(filter(None, ["127.0.0.1,localhost", inherited]))
        env.update({"NO_PROXY": no_proxy, "no_proxy": no_proxy})
        env.update({
            # Ray 2.60's `ray start --head` turns token auth on unless told otherwise.
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A SIGKILLed node is declared dead after ~5 s instead of ~15-30 s; the RPC
            # timeout stays long so a starved node on a busy 2-core box is not.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "5",
        })
        env.update(self._extra_env)
        return env

    def driver_env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver or ``ray job`` CLI on the head's machine: the nodes' own
        (auth off, moto credentials), ``RAY_ADDRESS`` pointing here, the head's ``HBT_CACHE``."""
        env = self._base_env()
        env.update({"RAY_ADDRESS": self.address, "HBT_CACHE": str(self.head_cache)})
        env.update(extra)
        return env

    # ---- lifecycle

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> SimCluster:
        """Starts the head and the workers, and waits until every node is alive."""
        if self._worker_specs:
            problem = unshare_problem()
            if problem:
                raise ClusterError(problem)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for d in self.head_dirs:
            d.mkdir(parents=True, exist_ok=True)
        self._janitor = _Janitor()
        self.short_root = Path(tempfile.mkdtemp(prefix="hbtc-", dir="/tmp"))
        self._janitor.remove_later(self.short_root)
        for sub in ("h", "ht", "hc"):
            (self.short_root / sub).mkdir()
        try:
            self._start_head()
            started = [self.add_worker(wait=False, **spec) for spec in self._worker_specs]
            self.wait_for_nodes([w.ip for w in started])
        except BaseException:
            self.close()
            raise
        return self

    def _start_head(self) -> None:
        self.gcs_port, self.dashboard_port, self.client_port = PORTS.take(3)
        env = self._base_env()
        env.update({
            "HBT_CACHE": str(self.head_cache),
            "TMPDIR": str(self.head_tmp),
        })
        cmd = [str(RAY_BIN), "start", "--head", "--block", "--num-cpus=0",
               f"--port={self.gcs_port}",
               f"--include-dashboard={'true' if self.dashboard else 'false'}", f"--dashboard-host={HEAD_IP}",
               f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={self.client_port}", *_node_port_flags(self.worker_ports),
               f"--temp-dir={self.head_temp_dir}", f"--object-store-memory={self.object_store_bytes}",
               "--disable-usage-stats"]
        if self.autoscaler is not None:
            config = self.tmp_root / "autoscaling.json"
            config.write_text(json.dumps(self.autoscaler.config(self.address), indent=1))
            cmd.append(f"--autoscaling-config={config}")
            # The fake provider refuses to run without RAY_FAKE_CLUSTER; the monitor loop
            # runs every second instead of every 5.
            env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        log = self.log_dir / "head.log"
        with log.open("wb") as out:
            self.head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        assert self._janitor is not None
        self._janitor.watch(self.head.pid)
        self._wait_port(self.gcs_port, self.head, log)
        self._wait_head(log)
        if self.dashboard:
            self._wait_dashboard(log)

    def add_worker(self, cpus: int = 1, *, wait: bool = True,
                   resources: Mapping[str, float] | None = None) -> WorkerNode:
        """Starts an isolated worker node on the next free 127.0.0.k.

        Args:
            cpus: its ``--num-cpus``.
            wait: block until the GCS lists it alive.
            resources: custom resources (``--resources``).
        """
        assert self.head is not None and self.short_root is not None, "cluster not started"
        ip = f"127.0.0.{self._next_host}"
        self._next_host += 1
        if not loopback_usable(ip):
            raise ClusterError(f"cannot bind {ip}: this host has no 127/8 loopback beyond 127.0.0.1")
        root = self.short_root / f"w{ip.rsplit('.', 1)[1]}"
        root.mkdir()
        # Each tmpfs hides whatever the host has at that path. Outer paths first, and `mkdir -p`
        # before each mount: a dir nested in one already hidden (head_dirs=["/tmp"]) must be
        # recreated inside that tmpfs to serve as a mount point.
        hidden = sorted({*self.head_dirs, self.head_temp_dir, self.head_tmp, self.head_cache, root},
                        key=lambda d: len(d.parts))
        mounts = " && ".join(f"mkdir -p {shlex.quote(str(d))} && mount -t tmpfs -o mode=0755 hbtc {shlex.quote(str(d))}"
                             for d in hidden)
        temp_dir, tmp_dir, cache_dir = root / "t", root / "tmp", root / "cache"
        ray_cmd = [str(RAY_BIN), "start", f"--address={self.address}", f"--node-ip-address={ip}",
                   f"--num-cpus={cpus}", "--block", f"--temp-dir={temp_dir}",
                   f"--object-store-memory={self.object_store_bytes}", *_node_port_flags(self.worker_ports),
                   "--disable-usage-stats"]
        if resources:
            ray_cmd.append(f"--resources={json.dumps(dict(resources))}")
        script = f"{mounts} && mkdir -p {temp_dir} {tmp_dir} {cache_dir} && exec {shlex.join(ray_cmd)}"
        env = self._base_env()
        env.update({"HBT_CACHE": str(cache_dir), "TMPDIR": str(tmp_dir)})
        log = self.log_dir / f"worker-{ip}.log"
        with log.open("wb") as out:
            # unshare and sh exec in turn (no --fork), so the Popen pid ends up being `ray start` itself.
            proc = subprocess.Popen(
                [*unshare_prefix(), "sh", "-c", script],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        assert self._janitor is not None
        self._janitor.watch(proc.pid)
        node = WorkerNode(ip=ip, cpus=cpus, root=root, proc=proc, log=log)
        self.workers.append(node)
        if wait:
            self.wait_for_nodes([ip])
        return node

    def kill_worker(self, index: int, *, wait_dead: bool = True, graceful: bool = False,
                    raylet_only: bool = False) -> WorkerNode:
        """Kills worker node ``index`` (in :attr:`workers` order) and all its processes.

        Args:
            index: position in :attr:`workers` (dead nodes keep their position).
            wait_dead: block until the GCS no longer lists it alive.
            graceful: SIGTERM first (the node drains and deregisters) instead of an outright
                SIGKILL (the GCS notices through missed health checks, like a lost machine).
            raylet_only: SIGKILL just the raylet, as in a raylet crash; ``ray start --block``
                then takes the node's other processes down itself (the rest is mopped up).
        """
        node = self.workers[index]
        if raylet_only:
            for proc in _session_procs(node.proc):
                with contextlib.suppress(psutil.Error):
                    if proc.name() == "raylet":
                        proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=30)
        end_sessions([node.proc], grace_s=5.0 if graceful else 0.0)
        node.ended = True
        if self._janitor is not None:
            self._janitor.forget(node.proc.pid)
        if wait_dead:
            deadline = time.monotonic() + self.timeout_s
            while node.ip in self.alive_node_ips():
                if time.monotonic() > deadline:
                    raise ClusterError(f"the GCS still lists {node.ip} alive {self.timeout_s}s after its kill")
                time.sleep(0.5)
        return node

    def close(self) -> None:
        """Stops every node this cluster started (only those), keeping copies of their logs."""
        running = [w for w in self.workers if not w.ended]
        for node in running:
            # Read through /proc/<pid>/root while the namespace (and its tmpfs) still exists.
            session = node.session_dir() if node.alive else None
            if session is not None:
                self._copy_logs(session / "logs", f"worker-{node.ip}")
        # Also the sessions of nodes whose `ray start` exited on its own: agents may linger.
        end_sessions([w.proc for w in running] + ([self.head] if self.head is not None else []))
        for node in running:
            node.ended = True
        if self.head is not None:
            self._copy_logs(self.head_temp_dir / "session_latest" / "logs", "head")
            self.head = None
        self._gcs = None
        if self._janitor is not None:
            self._janitor.dismiss()
            self._janitor = None
        if self.short_root is not None:
            # Worker mount points are plain empty dirs on the host once their namespaces died.
            shutil.rmtree(self.short_root, ignore_errors=True)
            self.short_root = None

    def _copy_logs(self, src: Path, name: str) -> None:
        try:
            shutil.copytree(src, self.log_dir / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.sock", "*.socket", "events"))
        except (OSError, shutil.Error):
            pass  # best effort: logs are for debugging only

    # ---- waiting

    def _gcs_client(self) -> Any:
        if self._gcs is None:
            from ray._raylet import GcsClient

            self._gcs = GcsClient(address=self.address)
        return self._gcs

    def _alive_nodes(self) -> list[Any]:
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        infos = self._gcs_client().get_all_node_info(timeout=10)
        return [i for i in infos.values() if i.state == GcsNodeInfo.ALIVE]

    def alive_node_ips(self) -> list[str]:
        """IPs of the nodes the GCS lists alive, the head's included."""
        return [i.node_manager_address for i in self._alive_nodes()]

    def wait_for_nodes(self, ips: Sequence[str]) -> None:
        """Waits until the GCS lists every node in ``ips`` alive; fails fast if one exits."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            for proc, log in self._procs_for(ips):
                if proc.poll() is not None:
                    raise ClusterError(f"node exited with {proc.returncode}; {log}:\n{_tail(log)}")
            try:
                alive = set(self.alive_node_ips())
            except Exception:  # the GCS may still be starting
                alive = set()
            if set(ips) <= alive:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes {sorted(set(ips) - alive)} not alive after {self.timeout_s}s")
            time.sleep(0.5)

    def _procs_for(self, ips: Sequence[str]) -> list[tuple[subprocess.Popen[bytes], Path]]:
        out = [(w.proc, w.log) for w in self.workers if w.ip in ips]
        if self.head is not None:
            out.append((self.head, self.log_dir / "head.log"))
        return out

    def _wait_head(self, log: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            assert self.head is not None
            if self.head.poll() is not None:
                raise ClusterError(f"head exited with {self.head.returncode}; {log}:\n{_tail(log)}")
            try:
                heads = [n for n in self._alive_nodes() if n.is_head_node]
            except Exception:  # the GCS may still be starting
                heads = []
            if heads:
                self.head_ip = heads[0].node_manager_address
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"head node not alive after {self.timeout_s}s:\n{_tail(log)}")
            time.sleep(0.5)

    def _wait_port(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if proc.poll() is not None:
                raise ClusterError(f"head exited with {proc.returncode}; {log}:\n{_tail(log)}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((HEAD_IP, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"nothing listens on {HEAD_IP}:{port} after {self.timeout_s}s:\n{_tail(log)}")
            time.sleep(0.3)

    def _wait_dashboard(self, log: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with _NO_PROXY.open(f"{self.dashboard_url}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.head is not None and self.head.poll() is not None:
                raise ClusterError(f"head exited with {self.head.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"dashboard {self.dashboard_url} not up after {self.timeout_s}s")
            time.sleep(0.5)

    # ---- drivers

    def run_driver(self, code: str, *, timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        """Runs ``python -c code`` on the head's machine with ``RAY_ADDRESS`` set to this cluster.

        A subprocess keeps ``ray.init`` out of the pytest process (whose own local Ray other
        tests may use). The result is not checked: assert on ``returncode`` and ``stdout``.
        """
        return subprocess.run([sys.executable, "-c", code], env=self.driver_env(**dict(env or {})),
                              cwd=cwd or self.tmp_root, capture_output=True, text=True, timeout=timeout_s)


# Loopback only: a proxy from the environment would not reach (or should not see) it.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- jobs


def submit_job(dashboard_url: str, entrypoint: str, runtime_env: Mapping[str, Any],
               timeout_s: float = 600.0) -> tuple[str, str]:
    """Submits a job as ``ray job submit`` does and waits for its end.

    A fresh head's job agent takes a few seconds (minutes on a loaded machine) to
    register, so "No available agent" is retried for up to two minutes.

    Returns:
        (the job's final status as a string, its logs)
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    give_up = time.monotonic() + 120
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=dict(runtime_env))
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > give_up:
                raise
            time.sleep(2)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    return str(status.value), client.get_job_logs(job_id)
