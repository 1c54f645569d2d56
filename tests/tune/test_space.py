"""Search-space YAMLs: the shipped ones load, and bad spaces fail at load, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hbt.config import PROJECT_ROOT, ConfigError, load_config
from hbt.tune.space import load_space, parse_space

SPACES = sorted((PROJECT_ROOT / "tune_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def local_cfg():
    return load_config(PROJECT_ROOT / "configs" / "local.yaml")


def test_alpha_and_full_spaces_ship():
    assert {p.name for p in SPACES} >= {"alpha.yaml", "full.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_load_and_start_with_their_command(path, local_cfg):
    space = load_space(path, local_cfg)
    assert space.params
    first = path.read_text(encoding="utf-8").splitlines()
    commands = [line for line in first if line.startswith("#") and "hbt tune --config configs/local.yaml" in line]
    assert first[0].startswith("#") and commands, "the YAML must open with a comment giving its command"
    assert f"--space tune_spaces/{path.name}" in commands[0]


def test_alpha_space_is_the_study_grid(local_cfg):
    space = load_space(PROJECT_ROOT / "tune_spaces" / "alpha.yaml", local_cfg)
    assert space.fixed == {"batching.strategy": "hybrid"}
    (alpha,) = space.params
    assert alpha.key == "batching.alpha" and alpha.kind == "grid"
    assert [float(v) for v in alpha.values] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert space.grid_size() == 5


def test_full_space_covers_alpha_lr_temperature_and_batch_size(local_cfg):
    space = load_space(PROJECT_ROOT / "tune_spaces" / "full.yaml", local_cfg)
    assert set(space.keys) == {"batching.alpha", "train.lr", "train.temperature", "batching.global_batch_size"}


def _space(tmp_path: Path, tree) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return p


def test_unknown_key_is_named_with_a_suggestion(tmp_path, local_cfg):
    p = _space(tmp_path, {"params": {"batching.alpah": {"grid": [0.0, 1.0]}}})
    msg = r"params\.batching\.alpah: unknown config key \(did you mean batching\.alpha\?\)"
    with pytest.raises(ConfigError, match=msg):
        load_space(p, local_cfg)


def test_unknown_fixed_key_and_section_keys_are_named(local_cfg):
    with pytest.raises(ConfigError, match=r"fixed\.train\.nope: unknown config key"):
        parse_space({"fixed": {"train.nope": 1}, "params": {"train.lr": {"choice": [1e-5]}}}, local_cfg)
    with pytest.raises(ConfigError, match=r"params\.batching: unknown config key \(a section"):
        parse_space({"params": {"batching": {"choice": [{}]}}}, local_cfg)


@pytest.mark.parametrize("key", ["tune.num_samples", "output_dir", "run_name", "tracking.uri"])
def test_keys_the_search_sets_are_refused(key, local_cfg):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": cannot be searched"):
        parse_space({"params": {key: {"choice": [1]}}}, local_cfg)


@pytest.mark.parametrize("spec, msg", [
    ({"gridd": [0.1]}, "exactly one of"),
    ({"grid": [0.1], "choice": [0.2]}, "exactly one of"),
    ({"grid": []}, "non-empty list"),
    ({"uniform": [0.5]}, r"\[low, high\]"),
    ({"uniform": [0.9, 0.1]}, "low < high"),
    ({"loguniform": [0.0, 0.1]}, "low > 0"),
])
def test_malformed_distributions(spec, msg, local_cfg):
    with pytest.raises(ConfigError, match=r"params\.train\.temperature: .*" + msg):
        parse_space({"params": {"train.temperature": spec}}, local_cfg)


def test_each_value_is_validated_with_the_config(local_cfg):
    msg = r"params\.batching\.alpha = 1\.5 gives an invalid config:(.|\n)*alpha must lie in"
    with pytest.raises(ConfigError, match=msg):
        parse_space({"params": {"batching.alpha": {"grid": [0.5, 1.5]}}}, local_cfg)
    # 2 workers: a global batch of 15 does not split.
    with pytest.raises(ConfigError, match=r"global_batch_size = 15(.|\n)*divisible by ray\.num_workers"):
        parse_space({"params": {"batching.global_batch_size": {"choice": [16, 15]}}}, local_cfg)
    # A float range on an integer key fails at load, not in a trial.
    with pytest.raises(ConfigError, match=r"params\.train\.max_steps = "):
        parse_space({"params": {"train.max_steps": {"uniform": [10, 100]}}}, local_cfg)
    with pytest.raises(ConfigError, match=r"params\.train\.lr = 0\.0"):
        parse_space({"params": {"train.lr": {"choice": [1e-5, 0.0]}}}, local_cfg)


def test_combinations_are_validated_together(local_cfg):
    # Each value is valid alone (base alpha 1 allows one language; base languages
    # allow alpha 0.5), but alpha 0.5 with one language has no cross-lingual pairs.
    cfg = load_config(PROJECT_ROOT / "configs" / "local.yaml", ["batching.alpha=1.0"])
    with pytest.raises(ConfigError, match=r"params combination .*'batching\.alpha': 0\.5.*'data\.languages': \['en'\]"):
        parse_space({"params": {"batching.alpha": {"grid": [0.5, 1.0]},
                                "data.languages": {"choice": [["en"], ["en", "de"]]}}}, cfg)


def test_fixed_values_are_validated_and_apply_before_the_params(local_cfg):
    with pytest.raises(ConfigError, match=r"fixed gives an invalid config"):
        parse_space({"fixed": {"batching.strategy": "nope"}, "params": {"train.lr": {"choice": [1e-5]}}}, local_cfg)
    with pytest.raises(ConfigError, match="both fixed and searched"):
        parse_space({"fixed": {"train.lr": 1e-5}, "params": {"train.lr": {"choice": [1e-5]}}}, local_cfg)
    with pytest.raises(ConfigError, match="unknown section"):
        parse_space({"param": {"train.lr": {"choice": [1e-5]}}}, local_cfg)


def test_to_tune_grid_vs_sampled(local_cfg):
    from ray.tune.search.sample import Categorical, Float

    space = parse_space({"params": {"batching.alpha": {"grid": [0.0, 1.0]}, "train.lr": {"loguniform": [1e-5, 1e-4]},
                                    "train.temperature": {"choice": [0.02, 0.05]}}}, local_cfg)
    grid = space.to_tune("grid")
    assert grid["batching.alpha"] == {"grid_search": [0.0, 1.0]}
    assert isinstance(grid["train.lr"], Float) and isinstance(grid["train.temperature"], Categorical)
    for alg in ("random", "optuna"):
        assert isinstance(space.to_tune(alg)["batching.alpha"], Categorical)
    assert parse_space(space.as_dict(), local_cfg).as_dict() == space.as_dict()
