"""Connecting to Ray (the job's cluster, a named one, or a fresh local one) and hbt's log lines."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

from hbt.config import HbtError

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


# Lines the libraries print on every run that tell a user nothing they can act on, each with why
# it is harmless. They are dropped from the driver's log handlers and from the worker lines Ray
# forwards; `-v` shows them. tests/test_cli.py runs real commands and checks their stderr against it.
LIBRARY_NOISE: tuple[tuple[str, str], ...] = (
    (r"Setting accelerator to CPU", "DeepSpeed finding no GPU where none is meant to be"),
    (r"Token authentication is enabled for this Ray cluster",
     "Ray's default for a local cluster, which hbt starts for itself on this host"),
    (r"Progress bars disabled", "Ray Data saying its bars are off: hbt turns them off when stderr is a log"),
    (r"does not have any available CPUs\. The Dataset job will hang",
     "Ray Data checking for free CPUs while hbt's own encoder actors hold them all, as `auto` plans"),
    (r"Cluster resources are not enough to run any task from .*may hang forever",
     "the same check, later: the encoder actors are the operator's resources, not a shortage"),
    (r"has constructor arguments in the object store and max_restarts > 0",
     "Ray's note on its own actors (Ray Train's controller, Ray Data's pool): nothing hbt passes"),
    (r"Failed to kill actor .*KillActor RPC failed",
     "Ray's GCS ending actors of a local Ray that is shutting down with the command"),
    (r"Reporting training result \d+: TrainingReport\(",
     "Ray Train echoing every checkpoint's metrics dict; hbt logs the step lines and MLflow has the metrics"),
    (r"^\s*$", "empty lines between forwarded worker lines"),
)
_NOISE = re.compile("|".join(f"(?:{p})" for p, _ in LIBRARY_NOISE))
# Ray Train v2's placement-group cleaner asks for "the" Ray instance of the host; with a second
# Ray on the host it dies in a ConnectionError traceback of ~30 lines per run. It only frees a
# dead controller's placement groups, which ending the local Ray also frees.
_NOISY_ACTORS = ("PlacementGroupCleaner",)


def is_library_noise(line: str) -> bool:
    """Whether a log line is one of :data:`LIBRARY_NOISE`."""
    return bool(_NOISE.search(line))


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_library_noise(record.getMessage())


def _verbose() -> bool:
    return log_level() <= logging.DEBUG


def _filter_library_noise() -> None:
    """Drops :data:`LIBRARY_NOISE` from Ray's and DeepSpeed's driver handlers; DeepSpeed's go to stderr.

    Filters sit on the handlers: records of child loggers (``ray.data.dataset``) reach them
    by propagation, where a logger's own filter would not see them.
    """
    if _verbose():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "DeepSpeed"):
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoiseFilter) for f in h.filters):
                h.addFilter(_NoiseFilter())
            # DeepSpeed's handler writes to stdout, which carries only a command's result.
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
                h.setStream(sys.stderr)


def _forward_worker_lines() -> None:
    """Ray's printer of forwarded worker lines, replaced by one that writes to stderr, less the noise.

    Ray prints a worker's stdout on the driver's stdout, so any library's print in a worker
    would land in the middle of ``hbt train``'s JSON. ``ray._private`` is pinned with Ray
    (``ray==2.60.0``); tests/test_cli.py's commands fail if these names move.
    """
    from ray._private.worker import global_worker_stdstream_dispatcher, print_to_stdstream

    verbose = _verbose()

    def forward(data: dict[str, Any]) -> None:
        if not verbose:
            if data.get("actor_name") in _NOISY_ACTORS or data.get("task_name") in _NOISY_ACTORS:
                return
            lines = [line for line in data.get("lines", []) if not is_library_noise(line)]
            if not lines:
                return
            data = {**data, "lines": lines}
        print_to_stdstream({**data, "is_err": True}, ignore_prefix=False)

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.add_handler("ray_print_logs", forward)


def deepspeed_accelerator_env() -> None:
    """``DS_ACCELERATOR=cpu`` where torch sees no CUDA device: DeepSpeed then takes its quiet override
    path instead of warning that it fell back to the CPU. Set before Ray starts, so a local Ray's
    workers inherit it; a cluster's GPU workers never see the driver's environment."""
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


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


class RayStartError(HbtError):
    """Ray did not start or could not be joined: one ``error:`` line with the likely cause."""

    def __init__(self, address: str | None, err: BaseException) -> None:
        first = next((x.strip() for x in str(err).splitlines() if x.strip()), type(err).__name__)
        if address in (None, "local"):
            cause = ("likely causes: too little free space in /tmp or /dev/shm (Ray's session files and object "
                     "store), or another Ray on this host holding the ports; its logs are in "
                     "/tmp/ray/session_latest/logs")
        else:
            cause = f"likely cause: no Ray cluster answers at {address!r} (is it up, and is RAY_ADDRESS right?)"
        super().__init__(f"Ray did not start ({type(err).__name__}: {first[:300]}); {cause}")


_own_local_ray = False


def own_local_ray() -> bool:
    """Whether this process started the Ray it uses, on this host alone: no node of it can be lost."""
    return _own_local_ray


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
    deepspeed_accelerator_env()
    _filter_library_noise()
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
    global _own_local_ray
    _own_local_ray = address == "local"
    if address == "local":
        # Ray starts workers at nice 15, below its own daemons; a local run's workers are
        # the job itself, so they get the priority `ray job submit` gives a job's workers.
        os.environ.setdefault("RAY_worker_niceness", "0")
    log = logging.getLogger(LOGGER)
    t0 = time.monotonic()
    log.info("starting Ray" if address == "local" else f"joining the Ray cluster at {address or 'RAY_ADDRESS'}")
    try:
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            # Under `ray job submit` the job's runtime env already reaches every
            # worker, and Ray refuses a driver runtime env that repeats its keys.
            ray.init(address=address, **init_kwargs)
        else:
            env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            env.update(_progress_bar_env())
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **init_kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, OSError) as e:
        raise RayStartError(address, e) from None
    log.info("Ray up in %.0fs: %g CPUs, %g GPUs", time.monotonic() - t0, ray.cluster_resources().get("CPU", 0),
             ray.cluster_resources().get("GPU", 0))
    _filter_library_noise()  # Ray Data's and Train's handlers exist once they are imported
    _forward_worker_lines()


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
