"""``train.precision``: fp32 against bf16 autocast on the study's own training run (configs/local.yaml).

Contenders: ``hbt.train.job.run_training`` on ``configs/local.yaml`` (the
study's worker layout, model, data, steps and seed 0) with
``train.precision=fp32`` and with ``train.precision=bf16``, run one after the
other in this process, each on a fresh local Ray. Reported from each run's
rank-0 ``metrics.jsonl``: the loss curve (every logged window), the final
loss, and the median pairs/s and data-wait share over the windows after the
first. The target: final bf16 loss within 2% of fp32.

On CPUs without AMX ``train.precision: auto`` resolves to fp32 (bf16 matmuls
there are emulated or only partly accelerated); ``bf16`` is forced here to
measure the numerics anyway, so its speed on such a CPU says nothing about AMX.

Command (about 6-8 minutes on 2 cores):

    timeout 1800 python benchmarks/train_precision.py --out benchmarks/results/train_precision.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import PROJECT_ROOT, claim_stdout, emit, log, machine, median, ratio


def run(precision: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One training run of the local config at ``precision``; its logged windows."""
    import ray

    from hbt.config import load_config
    from hbt.train.job import run_training

    cfg = load_config(PROJECT_ROOT / "configs" / "local.yaml",
                      [f"output_dir={out}", f"run_name=prec-{precision}", f"train.precision={precision}",
                       "batching.seed=0", *extra])
    try:
        result = run_training(cfg)
    finally:
        ray.shutdown()
    rows = [json.loads(x) for x in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    later = rows[1:] or rows
    return {"steps": [r["step"] for r in rows], "loss": [round(r["train/loss"], 5) for r in rows],
            "final_loss": rows[-1]["train/loss"],
            "pairs_per_s_median": median([r.get("train/samples_per_s", float("nan")) for r in later]),
            "data_wait_share_median": median([r.get("train/data_wait_frac", float("nan")) for r in later])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", help="a.b=c overrides for both runs (smoke tests)")
    args = ap.parse_args(argv)
    claim_stdout()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="hbt-bench-precision-") as tmp:
        for precision in ("fp32", "bf16"):
            log(f"training configs/local.yaml at {precision}")
            runs[precision] = run(precision, Path(tmp), args.overrides)
    rel = abs(runs["bf16"]["final_loss"] - runs["fp32"]["final_loss"]) / abs(runs["fp32"]["final_loss"])
    result = {
        "command": "python benchmarks/train_precision.py " + " ".join(argv or []),
        "final_loss_rel_diff": round(rel, 5),
        "targets_met": {"final_loss_within_2pct": rel <= 0.02},
        "pairs_per_s_ratio_bf16_over_fp32": ratio(runs["bf16"]["pairs_per_s_median"], runs["fp32"]["pairs_per_s_median"]),
        "machine": machine(),
        "runs": runs,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
