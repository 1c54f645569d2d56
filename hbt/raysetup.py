"""Connecting to Ray (the job's cluster, a named one, or a fresh local one) and hbt's log lines."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOGGER = "hbt"

# Environment passed on to every Ray worker, so workers resolve data paths and
# caches like the driver does (a worker's cwd is a Ray session dir).
_FORWARDED_ENV = ("HBT_DATA_ROOT", "HBT_CACHE", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def configure_logging(level: int | str | None = None) -> logging.Logger:
    """Gives the ``hbt`` logger one handler: ``[hbt] message`` lines on stderr.

    Idempotent, so the driver and every Ray worker can call it. The handler is the
    logger's own and records do not propagate: in a Ray Train worker the root logger
    has Ray's console handler, and both would print each line.

    Args:
        level: a logging level (``-q``: WARNING, ``-v``: DEBUG); ``None`` keeps the level
            already set, INFO the first time.

    Returns:
        The ``hbt`` logger.
    """
    log = logging.getLogger(LOGGER)
    if not any(getattr(h, "_hbt", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[hbt] %(message)s"))
        handler._hbt = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
        if level is None:
            level = logging.INFO
    if level is not None:
        log.setLevel(level)
        if log.getEffectiveLevel() > logging.INFO:
            _quiet_libraries()
    return log


# Loggers whose INFO lines fill a run's output, and the variables they read when imported
# later (MLflow and Ray Data configure their loggers at import).
_CHATTY = {"mlflow": "MLFLOW_LOGGING_LEVEL", "ray.data": "RAY_DATA_LOG_LEVEL"}


def _quiet_libraries() -> None:
    """``-q``: MLflow's and Ray Data's INFO lines go too (Ray's own: see :func:`init_ray`)."""
    for name, var in _CHATTY.items():
        os.environ.setdefault(var, "WARNING")
        logging.getLogger(name).setLevel(logging.WARNING)


def log_level() -> int:
    """The ``hbt`` logger's level, to hand to Ray workers (their processes start unconfigured)."""
    return logging.getLogger(LOGGER).getEffectiveLevel()


def _one_line_per_print() -> None:
    """Stops Ray Train printing every line of a training worker twice.

    Ray Train patches ``print`` in its workers to log through the root logger, whose
    console handler prints the line; and because Ray wraps a worker's ``sys.stdout``
    (``ray._private.utils.Unbuffered``), the patch takes stdout for redirected and also
    prints the line itself. Ray passes this variable on from the driver to its workers.
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def _progress_bar_env() -> dict[str, str]:
    """Off switches for the tqdm bars of transformers, huggingface_hub and DeepSpeed when
    stdout is not a terminal: redirected to a file, each redraw is a ``\r`` line."""
    if sys.stdout.isatty():
        return {}
    return {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


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

    configure_logging()
    _one_line_per_print()
    for k, v in _progress_bar_env().items():
        os.environ.setdefault(k, v)
    # Also inside Ray's own processes (a Tune trial runs training and evaluation
    # with Ray already up): their stdout is a log, never a terminal.
    _quiet_ray_data()
    if ray.is_initialized():
        return
    if log_level() > logging.INFO:  # -q: Ray's own INFO lines go too
        init_kwargs.setdefault("logging_level", logging.WARNING)
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
    env.update(_progress_bar_env())
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **init_kwargs)


def shutdown_ray() -> None:
    """Stops this process's Ray connection (and the local Ray it started).

    A command calls this before printing its result, so that no worker line Ray is
    still forwarding lands after the result.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()


def pinned_here():
    """A scheduling strategy for an actor that must live on this process's node (the driver's).

    For the small actors a run's driver reads from and rank 0 writes to (the run log, the
    skip ledger): on a worker node they would die with it and fail every restart.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
