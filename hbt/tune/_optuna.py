"""OptunaSearch that only sees the trial's final report (a module of its own: importing it imports optuna)."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FinalReportOptunaSearch(OptunaSearch):
    """OptunaSearch that skips the Train-phase reports, which carry no objective yet.

    Plain OptunaSearch reads ``result[metric]`` from every report (for pruning)
    and fails on the reports ``TuneReportCallback`` forwards during training.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
