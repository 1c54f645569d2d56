"""Connecting to Ray: the job's cluster, a named one, or a fresh local one."""

from __future__ import annotations

import os
from typing import Any

# Environment passed on to every Ray worker, so workers resolve data paths and
# caches like the driver does (a worker's cwd is a Ray session dir).
_FORWARDED_ENV = ("HBT_DATA_ROOT", "HBT_CACHE", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _quiet_ray_data() -> None:
    """Ray Data's progress bars only on a terminal, and no dump of its settings at each run.

    Redirected to a file, the bars' redraws and the settings dump made up most of a
    study's log (about 1000 lines); the per-operator summary lines stay.
    """
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    tty = sys.stdout.isatty()
    ctx.enable_progress_bars = tty
    ctx.enable_operator_progress_bars = tty
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def init_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Initialises Ray once per process.

    Args:
        address: ``None`` joins the cluster named by ``RAY_ADDRESS`` (``ray job
            submit`` sets it for the job's driver) and otherwise starts a
            fresh local Ray; ``"auto"`` or ``ray://...`` joins an existing one.
            ``None`` never attaches to a cluster someone else started with
            ``ray start`` on the same host: a local run must not land its
            workers, data and failures on a stranger's cluster.
        **init_kwargs: passed on to ``ray.init`` (e.g. ``num_cpus``, ``include_dashboard``).
    """
    import ray

    if ray.is_initialized():
        return
    _quiet_ray_data()
    if address is None and not os.environ.get("RAY_ADDRESS") and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        address = "local"
    if address == "local":
        # Ray starts workers at nice 15, below its own daemons; a local run's workers are
        # the job itself, so they get the priority `ray job submit` gives a job's workers.
        os.environ.setdefault("RAY_worker_niceness", "0")
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # Under `ray job submit` the job's runtime env already reaches every
        # worker, and Ray refuses a driver runtime env that repeats its keys.
        ray.init(address=address, **init_kwargs)
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **init_kwargs)
