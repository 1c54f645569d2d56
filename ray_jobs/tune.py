"""Search config keys with Ray Tune: a Ray Train run and a dev evaluation per trial.

    ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/cluster-xlmr.yaml \
        --space tune_spaces/alpha.yaml [--resume] [a.b=c ...]

The search runs in ``output_dir/<run_name or 'tune'>``; ``--resume`` continues it
there. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from hbt.config import ConfigError
from ray_jobs._args import base_parser, load_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    p = base_parser(__doc__, "python -m ray_jobs.tune")
    p.add_argument("--space", required=True, help="search space YAML (tune_spaces/)")
    p.add_argument("--resume", action="store_true", help="continue the stopped search of this run_name")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_or_exit(args)
    from hbt.tune import run_tune

    try:
        result = run_tune(cfg, space_path=args.space, resume=args.resume)
    except ConfigError as e:  # a bad space or tune setting: fails before Ray starts
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
