"""Helpers for ``@pytest.mark.cluster`` tests (the simulated clusters themselves: harness.py)."""

from __future__ import annotations

import pytest

from tests.cluster.harness import loopback_usable, unshare_problem


def skip_unless_isolation_works() -> None:
    """Skips the calling test where isolated worker nodes cannot be started."""
    problem = unshare_problem()
    if problem:
        pytest.skip(f"isolated worker nodes need a private mount namespace: {problem}")
    if not loopback_usable("127.0.0.2"):
        pytest.skip("isolated worker nodes need 127.0.0.2+ as loopback addresses (Linux has them)")
