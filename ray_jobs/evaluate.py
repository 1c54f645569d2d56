"""Evaluate a bi-encoder by benchmark on the cluster (the flags of ``hbt eval``).

    ray job submit --working-dir . -- python -m ray_jobs.evaluate --config configs/cluster-xlmr.yaml \
        --model s3://BUCKET/hbt-runs/RUN/model --benchmark xquad_r,mlqa_r --json
"""

from __future__ import annotations

import argparse
import sys

from ray_jobs._args import entrypoint_parser, run_hbt


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    return entrypoint_parser("eval", "python -m ray_jobs.evaluate")


def main(argv: list[str] | None = None) -> int:
    return run_hbt("eval", argv)


if __name__ == "__main__":
    sys.exit(main())
