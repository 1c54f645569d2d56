"""The HBT-vs-baselines study: paired bootstrap tests and the study report."""

from hbt.study.runner import run_study

__all__ = ["run_study"]
