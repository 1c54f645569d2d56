"""Search config keys with Ray Tune: a Ray Train run and a dev evaluation per trial (the flags of ``hbt tune``).

    ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/cluster-xlmr.yaml \
        --space tune_spaces/alpha.yaml [--resume] [a.b=c ...]

The search runs in ``output_dir/<run_name or 'tune'>``; ``--resume`` continues it
there. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import sys

from ray_jobs._args import entrypoint_parser, run_hbt


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    return entrypoint_parser("tune", "python -m ray_jobs.tune")


def main(argv: list[str] | None = None) -> int:
    return run_hbt("tune", argv)


if __name__ == "__main__":
    sys.exit(main())
