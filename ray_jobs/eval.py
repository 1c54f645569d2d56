"""Evaluate a saved bi-encoder on the configured benchmarks.

    ray job submit --working-dir . -- python -m ray_jobs.eval --config configs/local.yaml --model DIR
"""

from __future__ import annotations

import argparse
import json

from ray_jobs._args import base_parser, load_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests/test_docs_commands.py)."""
    p = base_parser(__doc__, "python -m ray_jobs.eval")
    p.add_argument("--model", default=None, help="model dir (default: model.name_or_path)")
    p.add_argument("--out", default=None, help="output dir (default: output_dir/eval-<time>)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_or_exit(args)
    from hbt.eval.runner import run_eval_job

    print(json.dumps(run_eval_job(cfg, model=args.model, out_dir=args.out), indent=2, default=str))


if __name__ == "__main__":
    main()
