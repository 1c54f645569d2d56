"""Helpers shared by the benchmark scripts: machine facts, medians, the JSON line.

Every script prints exactly one JSON line on stdout (progress goes to stderr),
so ``python benchmarks/X.py ... | tail -1`` is the result. Timings on a shared
2-core machine drift by tens of percent between minutes, so each script runs
its contenders interleaved (contender order rotates per repetition) and
reports medians and ratios of medians; the raw times stay in the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(PROJECT_ROOT))


def start_ray(num_cpus: int) -> None:
    """A fresh local Ray for one contender, started exactly as hbt starts one.

    ``hbt.raysetup.init_ray("local")`` never joins a cluster another user started
    on this machine and gives the workers nice 0 (Ray's default, 15, would make
    them lose every contended time slice to the nice-0 bare contenders).
    """
    import ray

    from hbt.raysetup import init_ray

    init_ray("local", num_cpus=num_cpus, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def log(*args: Any) -> None:
    """Progress on stderr (stdout is reserved for the JSON line)."""
    print("[bench]", *args, file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    """The median (nan for no values)."""
    xs = [x for x in xs if x == x]
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    """a / b rounded for the report (nan when b is 0 or missing)."""
    return round(a / b, 3) if b and b == b and a == a else float("nan")


def rotate(items: Sequence[Any], rep: int) -> list[Any]:
    """``items`` rotated by ``rep``: each contender runs first in some repetition."""
    k = rep % max(1, len(items))
    return list(items[k:]) + list(items[:k])


def cpu_model() -> str:
    """lscpu's model name (or platform's)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU flags from /proc/cpuinfo (empty off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using the CPU right now (names only): were other jobs running?"""
    try:
        import psutil
    except ImportError:
        return []
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except Exception:
            pass
    time.sleep(0.5)
    me = os.getpid()
    out = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c >= min_cpu and p.pid != me:
                name = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:80]
                out.append(f"{c:.0f}% {name}")
        except Exception:
            pass
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was at the start."""
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "busy_processes_start": busy_processes(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


_RESULT_OUT = None


def claim_stdout() -> None:
    """Sends everything else that writes to fd 1 (Ray workers' logs, DeepSpeed, transformers)
    to stderr, keeping the real stdout for :func:`emit`'s JSON line."""
    global _RESULT_OUT
    if _RESULT_OUT is not None:
        return
    sys.stdout.flush()
    _RESULT_OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(result: dict[str, Any], path: str | None = None) -> None:
    """Prints the result as one JSON line on stdout (adds the load average at the end).

    Args:
        result: the result.
        path: also write it (indented) to this file.
    """
    result.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    line = json.dumps(result, default=_jsonable)
    out = _RESULT_OUT or sys.stdout
    out.write(line + "\n")
    out.flush()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, default=_jsonable, indent=1) + "\n", encoding="utf-8")


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def rss_bytes() -> int:
    """This process's resident memory."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
