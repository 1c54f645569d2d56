"""The HBT-vs-baselines study: paired bootstrap tests and the study report."""
