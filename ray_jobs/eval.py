"""The older name of :mod:`ray_jobs.evaluate` (same flags as ``hbt eval``), kept for existing job scripts.

    ray job submit --working-dir . -- python -m ray_jobs.eval --config configs/local.yaml --model DIR
"""

from __future__ import annotations

import sys

from ray_jobs.evaluate import run

if __name__ == "__main__":
    sys.exit(run())
