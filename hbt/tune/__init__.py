"""Hyperparameter search with Ray Tune: spaces, objectives, the search, its report.

- :mod:`hbt.tune.space` reads and validates the search-space YAMLs (``tune_spaces/``).
- :mod:`hbt.objective` (below train and tune, which both use it) names the dev metrics and the objective.
- :mod:`hbt.tune.search` runs (and resumes) the search: a Ray Train run and a
  dev evaluation per trial, MLflow runs nested under the search's run.
- :mod:`hbt.tune.report` writes the trial table, the best config, the Pareto front and plots.
"""

from hbt.tune.search import run_tune

__all__ = ["run_tune"]
