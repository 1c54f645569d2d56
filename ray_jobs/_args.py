"""The argument parsing shared by every ``ray_jobs`` entrypoint."""

from __future__ import annotations

import argparse
import sys

from hbt.config import ConfigError, HBTConfig, load_config


def base_parser(description: str, prog: str) -> argparse.ArgumentParser:
    """``--config FILE [a.b=c ...]``; each entrypoint's ``build_parser`` adds its own flags."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/)")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides")
    return p


def load_or_exit(args: argparse.Namespace) -> HBTConfig:
    """Validates the config named by ``args``.

    Exits with status 2 and the offending keys when the config is invalid,
    before any cluster resources are requested.
    """
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
