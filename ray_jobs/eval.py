"""Evaluate a saved bi-encoder on the configured benchmarks.

    ray job submit --working-dir . -- python -m ray_jobs.eval --config configs/local.yaml --model DIR
"""

from __future__ import annotations

import json

from hbt.eval.runner import run_eval_job
from ray_jobs._args import parse


def main() -> None:
    cfg, args = parse(__doc__, [(("--model",), {"default": None}), (("--out",), {"default": None})])
    print(json.dumps(run_eval_job(cfg, model=args.model, out_dir=args.out), indent=2, default=str))


if __name__ == "__main__":
    main()
