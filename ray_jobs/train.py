"""Train one bi-encoder on the cluster.

    ray job submit --working-dir . -- python -m ray_jobs.train --config configs/local.yaml [a.b=c ...]
"""

from __future__ import annotations

import argparse
import json

from ray_jobs._args import base_parser, load_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    p = base_parser(__doc__, "python -m ray_jobs.train")
    p.add_argument("--resume", default=None, help="run name to continue")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_or_exit(args)
    from hbt.train.job import run_training

    print(json.dumps(run_training(cfg, resume_from=args.resume), indent=2, default=str))


if __name__ == "__main__":
    main()
