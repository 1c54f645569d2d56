"""Evaluate a bi-encoder by benchmark on the cluster: the same flags as ``hbt eval``.

    ray job submit --working-dir . -- python -m ray_jobs.evaluate --config configs/cluster-xlmr.yaml \
        --model s3://BUCKET/hbt-runs/RUN/model --benchmark xquad_r,mlqa_r --output eval.json
"""

from __future__ import annotations

import sys

from hbt.cli import main


def run(argv: list[str] | None = None) -> int:
    """``hbt eval`` with these arguments: one parser, one validation, one summary."""
    return main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
