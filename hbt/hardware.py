"""What the hardware runs fast: the ``auto`` choices of ``eval.precision`` and ``train.precision``."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=2)
def bf16_is_fast(gpu: bool) -> bool:
    """True on a CUDA GPU with bf16 support, or a CPU with bf16 matrix instructions (AMX or AVX512-BF16).

    Measured e5-small forward passes (batch 64, length 64, 2 threads): an AMD EPYC
    with AVX512-BF16 ran 56-63 texts/s in fp32 and 117-132 in bf16; a Xeon with AMX
    about 81 and 314-376. CPUs with neither emulate bf16 and ran 2-3x slower than fp32.
    """
    import torch

    if gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return "amx_bf16" in flags or "avx512_bf16" in flags or "AMX" in str(capability).upper()


def resolve_precision(precision: str, gpu: bool) -> str:
    """``auto`` becomes ``bf16_weights`` where bf16 is fast, else ``fp32``; explicit values stay."""
    if precision != "auto":
        return precision
    return "bf16_weights" if bf16_is_fast(gpu) else "fp32"


def resolve_train_precision(precision: str, gpu: bool) -> tuple[str, str]:
    """``train.precision`` made concrete for this worker's device, with the reason (for the log)."""
    if precision != "auto":
        return precision, "set in the config"
    # The same rule as evaluation: one forward runs on the same bf16 matmul kernels. In the study's
    # layout on an AVX512-BF16 CPU without AMX a step ran 1.36x fp32, the final loss within 0.08 %
    # (docs/benchmarks.md), and every CPU kind of the pool then trains with the same numerics.
    if bf16_is_fast(gpu):
        return "bf16", "auto: a bf16 GPU" if gpu else "auto: a CPU with bf16 matrix instructions (AMX or AVX512-BF16)"
    return "fp32", "auto: no bf16 GPU, and a CPU without AMX or AVX512-BF16"


def machine_facts() -> dict[str, object]:
    """What a result was measured on, for its JSON: CPU model, cores, bf16 instructions, GPU, torch."""
    import os

    import torch

    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        info = ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(), "amx": "amx_bf16" in info, "avx512_bf16": "avx512_bf16" in info,
            "gpu": gpu, "torch": torch.__version__}


def machine_text(facts: dict[str, object]) -> str:
    """``AMD EPYC, 2 cores, AVX512-BF16, no GPU``: a machine in words, from :func:`machine_facts`."""
    bf16 = "AMX" if facts.get("amx") else ("AVX512-BF16" if facts.get("avx512_bf16") else "no bf16 instructions")
    return f"{facts.get('cpu')}, {facts.get('cores')} cores, {bf16}, " + (
        f"GPU {facts['gpu']}" if facts.get("gpu") else "no GPU")
