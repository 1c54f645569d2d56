"""The HBT study: train every strategy, evaluate in and out of domain, report.

    ray job submit --working-dir . -- python -m ray_jobs.study --config configs/cluster-xlmr.yaml
"""

from __future__ import annotations

import argparse

from ray_jobs._args import base_parser, load_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    return base_parser(__doc__, "python -m ray_jobs.study")


def main(argv: list[str] | None = None) -> None:
    cfg = load_or_exit(build_parser().parse_args(argv))
    from hbt.study import run_study

    run_study(cfg)


if __name__ == "__main__":
    main()
