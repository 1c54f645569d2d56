"""The HBT study: train every strategy, evaluate in and out of domain, report (the flags of ``hbt study``).

    ray job submit --working-dir . -- python -m ray_jobs.study --config configs/cluster-xlmr.yaml
"""

from __future__ import annotations

import argparse
import sys

from ray_jobs._args import entrypoint_parser, run_hbt


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    return entrypoint_parser("study", "python -m ray_jobs.study")


def main(argv: list[str] | None = None) -> int:
    return run_hbt("study", argv)


if __name__ == "__main__":
    sys.exit(main())
