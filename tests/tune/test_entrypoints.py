"""`hbt tune` and `python -m ray_jobs.tune`: bad spaces and settings fail before Ray starts, exit 2."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from hbt.cli import main as hbt_main
from hbt.config import PROJECT_ROOT


def test_ray_job_entrypoint_names_the_bad_space_key(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"batching.alpah": {"grid": [0.0, 1.0]}}}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "ray_jobs.tune", "--config", "configs/local.yaml", "--space", str(space),
         f"output_dir={tmp_path}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "params.batching.alpah: unknown config key" in proc.stderr
    assert not (tmp_path / "tune").exists()


def test_ray_job_entrypoint_is_thin():
    assert len((PROJECT_ROOT / "ray_jobs" / "tune.py").read_text().splitlines()) < 80


@pytest.mark.skipif(importlib.util.find_spec("hyperopt") is not None, reason="hyperopt is installed")
def test_hbt_tune_refuses_a_missing_optional_package(tmp_path, capsys):
    rc = hbt_main(["tune", "--config", str(PROJECT_ROOT / "configs" / "local.yaml"),
                   "--space", str(PROJECT_ROOT / "tune_spaces" / "alpha.yaml"),
                   f"output_dir={tmp_path}", "tune.search_alg=hyperopt"])
    assert rc == 2 and "needs the 'hyperopt' package" in capsys.readouterr().err


def test_hbt_tune_refuses_an_unknown_space_key_before_ray(tmp_path, capsys):
    import ray

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"train.lrr": {"grid": [1e-5, 2e-5]}}}), encoding="utf-8")
    started = ray.is_initialized()
    rc = hbt_main(["tune", "--config", str(PROJECT_ROOT / "configs" / "local.yaml"), "--space", str(space),
                   f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "params.train.lrr: unknown config key (did you mean train.lr?)" in err
    assert ray.is_initialized() == started and not (tmp_path / "out").exists()
