"""Objectives: dev metric keys, single and weighted objectives, and what fails at load."""

from __future__ import annotations

import math

import pytest

from hbt.config import ConfigError, load_config
from hbt.objective import dev_metrics, objective_value, objective_weights, validate_objective

METRICS = {"dev/monolingual/mAP": 0.6, "dev/cross_lingual/mAP": 0.4, "dev/multilingual/mAP": 0.3,
           "dev/bias/own_language_top1": 0.9, "train/loss": 1.2}


def test_single_objective_is_the_metric():
    cfg = load_config(None, ["tune.objective=dev/cross_lingual/mAP"])
    assert objective_weights(cfg) == {"dev/cross_lingual/mAP": 1.0}
    assert objective_value(METRICS, objective_weights(cfg)) == 0.4


def test_weighted_objective_is_the_weighted_sum():
    cfg = load_config(None, ["tune.objective_weights={dev/monolingual/mAP: 0.25, dev/cross_lingual/mAP: 0.25, "
                             "dev/multilingual/mAP: 0.5, dev/bias/own_language_top1: -0.1}"])
    weights = validate_objective(cfg)
    expected = 0.25 * 0.6 + 0.25 * 0.4 + 0.5 * 0.3 - 0.1 * 0.9
    assert math.isclose(objective_value(METRICS, weights), expected)


def test_missing_objective_metric_names_it():
    with pytest.raises(KeyError, match=r"dev/multilingual/MAP.*closest: 'dev/multilingual/mAP'"):
        objective_value(METRICS, {"dev/multilingual/MAP": 1.0})


def test_dev_metrics_rename_the_xquad_keys():
    got = dev_metrics({"xquad_r/multilingual/mAP": 0.5, "xquad_r/cross_lingual/de-en/mAP": 0.2, "tatoeba/acc@1": 1.0})
    assert got == {"dev/multilingual/mAP": 0.5, "dev/cross_lingual/de-en/mAP": 0.2}


@pytest.mark.parametrize("override, msg", [
    ("tune.objective=xquad_r/multilingual/mAP", "report dev-split metrics as 'dev/multilingual/mAP'"),
    ("tune.objective=dev/multilingul/mAP", "not a reported metric"),
    ("tune.objective=multilingual/mAP", "not a reported metric"),
    ("tune.objective_weights={dev/monolingual/mAP: 0.0}", "all weights are zero"),
    ("tune.objective_weights={dev/monolingual/mAP: .nan}", "finite number"),
])
def test_bad_objectives_fail_at_load(override, msg):
    with pytest.raises(ConfigError, match=msg):
        validate_objective(load_config(None, [override]))


def test_objective_needs_its_eval_setting():
    cfg = load_config(None, ["eval.settings=[monolingual, cross_lingual]", "tune.objective=dev/bias/own_language_top1"])
    with pytest.raises(ConfigError, match="needs 'multilingual' in eval.settings"):
        validate_objective(cfg)
    cfg = load_config(None, ["tune.objective=train/loss", "tune.mode=min"])
    assert validate_objective(cfg) == {"train/loss": 1.0}
