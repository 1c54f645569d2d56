"""Connecting to Ray: a cluster when one is running or named, else a local one."""

from __future__ import annotations

import os

# Environment passed on to every Ray worker, so workers resolve data paths and
# caches like the driver does (a worker's cwd is a Ray session dir).
_FORWARDED_ENV = ("HBT_DATA_ROOT", "HBT_CACHE", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def init_ray(address: str | None = None) -> None:
    """Initialises Ray once per process.

    Args:
        address: ``None`` joins the cluster this process runs on (``ray job
            submit`` sets ``RAY_ADDRESS``) or starts a local Ray; ``"auto"`` or
            ``ray://...`` joins an existing one.
    """
    import ray

    if ray.is_initialized():
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # Under `ray job submit` the job's runtime env already reaches every
        # worker, and Ray refuses a driver runtime env that repeats its keys.
        ray.init(address=address)
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
