"""What `hbt train` prints: one line per logged step with elapsed time and ETA, no progress-bar
redraws, and a last line that says how to load the model."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from hbt.config import PROJECT_ROOT
from hbt.train.loop import _hms, _Meter


@pytest.mark.slow
def test_train_log_has_one_line_per_step_and_ends_with_how_to_load(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    log_file = tmp_path / "train.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "hbt.cli", "train", f"output_dir={tmp_path / 'out'}",
           f"model.name_or_path={tiny_model_dir}", "data.languages=[en,de,es]", "data.max_questions=64",
           "batching.global_batch_size=8", "model.max_passage_length=48", "model.max_query_length=24",
           "train.max_steps=6", "train.warmup_steps=2", "train.log_every=1", "train.lr=1e-3",
           "tracking.experiment=hbt-tests", "run_name=logs"]
    with open(log_file, "wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600).returncode
    raw = log_file.read_bytes().decode("utf-8", errors="replace")
    assert rc == 0, raw[-3000:]

    assert "\r" not in raw, "a progress bar redrew in the log"
    lines = raw.splitlines()
    bars = [x for x in lines if re.search(r"\d+%\|", x) or re.search(r"Running .*: .*%", x)]
    assert not bars, bars
    steps = [x for x in lines if re.search(r"\[hbt\] step \d+/6 loss", x)]
    assert len(steps) == 6, steps  # once each, not echoed twice
    assert len({re.search(r"step (\d+)/6", x).group(1) for x in steps}) == 6
    assert all(re.search(r"elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d", x) for x in steps), steps
    model_dir = tmp_path / "out" / "logs" / "model"
    # It ends with how to load the model, then where its MLflow run is (every command's last line).
    assert lines[-2] == f'[hbt] load it with: SentenceTransformer("{model_dir.resolve()}")'
    assert lines[-1] == f"[hbt] MLflow runs: mlflow ui --backend-store-uri sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"

    st = SentenceTransformer(str(model_dir), device="cpu")
    assert st.prompts == {"query": "query: ", "document": "passage: "}
    assert st.max_seq_length == 48


def test_meter_eta_counts_from_the_first_step_of_this_worker(monkeypatch):
    clock = iter([100.0, 100.0, 130.0])
    monkeypatch.setattr("hbt.train.loop.time.perf_counter", lambda: next(clock))
    meter = _Meter(first_step=10, max_steps=40)  # resumed at step 10
    elapsed, eta = meter.elapsed_and_eta(13)  # 3 steps in 30 s, 27 to go
    assert (elapsed, eta) == (30.0, 270.0)
    assert _hms(eta) == "0:04:30" and _hms(3725) == "1:02:05"


@pytest.fixture
def _restore_logging():
    """-q quietens library loggers and sets their variables in this process: undo that."""
    env = dict(os.environ)
    levels = {n: logging.getLogger(n).level for n in ("hbt", "mlflow", "ray.data")}
    yield
    os.environ.clear()
    os.environ.update(env)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


@pytest.mark.parametrize("flag, level", [("-q", logging.WARNING), ("-v", logging.DEBUG), (None, logging.INFO)])
def test_quiet_and_verbose_flags_set_the_log_level(flag, level, capsys, _restore_logging):
    from hbt.cli import main

    args = [flag] if flag else []
    assert main([*args, "config", "validate", str(PROJECT_ROOT / "configs" / "local.yaml")]) == 0
    assert logging.getLogger("hbt").level == level
    assert (logging.getLogger("mlflow").level == logging.WARNING) == (flag == "-q")
    assert capsys.readouterr().out.strip().endswith(": OK")  # the result is printed even with -q
