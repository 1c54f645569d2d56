"""What every ``ray_jobs`` entrypoint shares: ``hbt``'s own parser, validation and error handling.

An entrypoint is ``hbt <command>`` under another name, so a cluster job and a
local run take the same flags, validate the config before any cluster
resources are requested, and report every user error as one ``error:`` line
with exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import sys


def entrypoint_parser(command: str, prog: str) -> argparse.ArgumentParser:
    """``hbt <command>``'s parser, named as the entrypoint."""
    from hbt.cli import subcommand_parser

    p = copy.copy(subcommand_parser(command))
    p.prog = prog
    return p


def run_hbt(command: str, argv: list[str] | None = None) -> int:
    """Runs ``hbt <command> argv`` (default: this process's arguments); returns its exit status."""
    from hbt.cli import main

    return main([command, *(sys.argv[1:] if argv is None else argv)])
