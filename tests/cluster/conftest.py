"""Fixtures for ``@pytest.mark.cluster`` tests: moto's S3 server and simulated multi-node clusters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import S3Server, SimCluster, loopback_usable, unshare_problem


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free 127.0.0.1 port, bucket ``hbt`` created.

    It runs in a thread of the pytest process; Ray nodes reach it over TCP. ``.uri()`` is a
    pyarrow URI such as ``s3://hbt/runs?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1``.
    """
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


def skip_unless_isolation_works() -> None:
    """Skips the calling test where isolated worker nodes cannot be started."""
    problem = unshare_problem()
    if problem:
        pytest.skip(f"isolated worker nodes need a private mount namespace: {problem}")
    if not loopback_usable("127.0.0.2"):
        pytest.skip("isolated worker nodes need 127.0.0.2+ as loopback addresses (Linux has them)")


@pytest.fixture
def sim_cluster(tmp_path: Path, s3_server: S3Server) -> Iterator[Callable[..., SimCluster]]:
    """Factory of started :class:`SimCluster` s, all closed after the test.

    ``sim_cluster(head_dirs=[...], workers=[{"cpus": 1}, ...], env={...}, autoscaler=...)``
    takes :class:`SimCluster`'s arguments but ``tmp_root``. A test that asks for isolated
    workers is skipped where ``unshare -m`` is not permitted. Requesting ``s3_server`` here
    makes moto outlive every cluster (fixtures are torn down in reverse order).
    """
    made: list[SimCluster] = []

    def make(**kwargs: object) -> SimCluster:
        if kwargs.get("workers", ({"cpus": 1},)):
            skip_unless_isolation_works()
        cluster = SimCluster(tmp_path / f"cluster{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in reversed(made):
            cluster.close()
