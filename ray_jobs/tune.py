"""Search config keys with Ray Tune: a Ray Train run and a dev evaluation per trial.

    ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/local.yaml \
        --space tune_spaces/alpha.yaml [--resume] [a.b=c ...]

The search runs in ``output_dir/<run_name or 'tune'>``; ``--resume`` continues it
there. See docs/tuning.md.
"""

from __future__ import annotations

import json
import sys

from hbt.config import ConfigError
from hbt.tune import run_tune
from ray_jobs._args import parse


def main() -> None:
    cfg, args = parse(__doc__, [
        (("--space",), {"required": True, "help": "search space YAML (tune_spaces/)"}),
        (("--resume",), {"action": "store_true", "help": "continue the stopped search of this run_name"}),
    ])
    try:
        result = run_tune(cfg, space_path=args.space, resume=args.resume)
    except ConfigError as e:  # a bad space or tune setting: fails before Ray starts
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
