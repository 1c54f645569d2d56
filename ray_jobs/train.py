"""Train one bi-encoder on the cluster (the flags of ``hbt train``).

    ray job submit --working-dir . -- python -m ray_jobs.train --config configs/cluster-xlmr.yaml [a.b=c ...]
"""

from __future__ import annotations

import argparse
import sys

from ray_jobs._args import entrypoint_parser, run_hbt


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    return entrypoint_parser("train", "python -m ray_jobs.train")


def main(argv: list[str] | None = None) -> int:
    return run_hbt("train", argv)


if __name__ == "__main__":
    sys.exit(main())
