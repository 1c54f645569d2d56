"""What a search optimises: dev metric keys, single and weighted objectives.

A trial evaluates on the dev split (XQuAD-R on ``data.dev_articles`` only), so
its metrics are reported as ``dev/<setting>/<metric>``: the runner's
``xquad_r/multilingual/mAP`` becomes ``dev/multilingual/mAP``, keeping the
test-split keys (``xquad_r/...``) for the held-out numbers. The objective is
``tune.objective`` or, when ``tune.objective_weights`` is set, the weighted sum
of those metrics; it is reported as ``objective`` and optimised in
``tune.mode``. A weight may be negative, e.g. to penalise
``dev/bias/own_language_top1`` (preferring the query's own language) in a
``max`` search.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

from hbt.config import ConfigError, HBTConfig

OBJECTIVE = "objective"
DEV_PREFIX = "dev/"
# Dev settings and the eval.settings entry each needs.
DEV_SETTINGS = {"monolingual": "monolingual", "cross_lingual": "cross_lingual",
                "multilingual": "multilingual", "bias": "multilingual"}
# The three axes of the Pareto front.
PARETO_KEYS = ("dev/monolingual/mAP", "dev/cross_lingual/mAP", "dev/multilingual/mAP")
BIAS_KEYS = ("dev/bias/own_language_top1", "dev/bias/rank_distance_mean")


def objective_weights(cfg: HBTConfig) -> dict[str, float]:
    """``tune.objective_weights``, or ``{tune.objective: 1.0}``."""
    t = cfg.tune
    return dict(t.objective_weights) if t.objective_weights else {t.objective: 1.0}


def validate_objective(cfg: HBTConfig) -> dict[str, float]:
    """Checks the objective keys against what a trial reports.

    Returns:
        The weights (see :func:`objective_weights`).

    Raises:
        ConfigError: a key that no trial reports (not ``dev/...`` or
            ``train/...``, or a setting missing from ``eval.settings``), or
            weights that are all zero or not finite.
    """
    weights = objective_weights(cfg)
    where = "tune.objective_weights" if cfg.tune.objective_weights else "tune.objective"
    for key, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"{where}: weight of {key!r} must be a finite number, got {w!r}")
        if key.startswith("train/"):
            continue
        if key.startswith("xquad_r/"):
            raise ConfigError(f"{where}: {key!r}: trials report dev-split metrics as "
                              f"{DEV_PREFIX + key.split('/', 1)[1]!r}")
        parts = key.split("/")
        if parts[0] != "dev" or len(parts) < 3 or parts[1] not in DEV_SETTINGS:
            raise ConfigError(f"{where}: {key!r} is not a reported metric; use dev/<setting>/<metric> with setting "
                              f"in {sorted(DEV_SETTINGS)} (e.g. dev/multilingual/mAP) or a train/... metric")
        need = DEV_SETTINGS[parts[1]]
        if need not in cfg.eval.settings:
            raise ConfigError(f"{where}: {key!r} needs {need!r} in eval.settings ({cfg.eval.settings})")
    if not any(weights.values()):
        raise ConfigError(f"{where}: all weights are zero")
    return weights


def dev_metrics(eval_metrics: Mapping[str, float]) -> dict[str, float]:
    """The runner's XQuAD-R dev metrics under ``dev/...`` keys."""
    return {DEV_PREFIX + k.split("/", 1)[1]: float(v) for k, v in eval_metrics.items() if k.startswith("xquad_r/")}


def objective_value(metrics: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted sum ``sum(w * metrics[k])``.

    Raises:
        KeyError: a weighted key is missing from ``metrics`` (the message names
            it and the closest reported key).
    """
    total = 0.0
    for key, w in weights.items():
        if key not in metrics:
            close = difflib.get_close_matches(key, list(metrics), n=1)
            raise KeyError(f"objective metric {key!r} was not reported"
                           + (f" (closest: {close[0]!r})" if close else ""))
        total += w * float(metrics[key])
    return total
