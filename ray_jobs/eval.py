"""The older name of :mod:`ray_jobs.evaluate`, kept for existing job scripts (the flags of ``hbt eval``).

    ray job submit --working-dir . -- python -m ray_jobs.eval --config configs/cluster-xlmr.yaml --model RUN
"""

from __future__ import annotations

import sys

from ray_jobs.evaluate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
