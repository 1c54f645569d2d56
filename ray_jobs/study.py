"""The HBT study: train every strategy, evaluate in and out of domain, report.

    ray job submit --working-dir . -- python -m ray_jobs.study --config configs/cluster-xlmr.yaml
"""

from __future__ import annotations

from hbt.study import run_study
from ray_jobs._args import parse


def main() -> None:
    cfg, _ = parse(__doc__)
    run_study(cfg)


if __name__ == "__main__":
    main()
