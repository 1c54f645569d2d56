"""The argument parsing shared by every ``ray_jobs`` entrypoint."""

from __future__ import annotations

import argparse
import sys

from hbt.config import ConfigError, HBTConfig, load_config


def parse(description: str, extra: list[tuple[tuple[str, ...], dict]] | None = None) -> tuple[HBTConfig, argparse.Namespace]:
    """Parses ``--config FILE [a.b=c ...]`` (plus job-specific flags) and validates the config.

    Exits with status 2 and the offending keys when the config is invalid,
    before any cluster resources are requested.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config (configs/)")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides")
    for flags, kwargs in extra or []:
        p.add_argument(*flags, **kwargs)
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return cfg, args
