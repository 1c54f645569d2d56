"""Train one bi-encoder on the cluster.

    ray job submit --working-dir . -- python -m ray_jobs.train --config configs/local.yaml [a.b=c ...]
"""

from __future__ import annotations

import json

from hbt.train.job import run_training
from ray_jobs._args import parse


def main() -> None:
    cfg, args = parse(__doc__, [(("--resume",), {"default": None, "help": "run name to continue"})])
    print(json.dumps(run_training(cfg, resume_from=args.resume), indent=2, default=str))


if __name__ == "__main__":
    main()
