"""``hbt`` as a user runs it: what lands on stdout and stderr, and what ``hbt eval --model RUN`` scores.

One tiny training run (2 steps of the random 2-layer model) is shared by the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from hbt.config import PROJECT_ROOT
from hbt.raysetup import is_library_noise

pytestmark = pytest.mark.slow


def _hbt(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hbt.cli", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=timeout)


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and is_library_noise(line)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    proc = _hbt("-q", "train", "--config", "configs/local.yaml", f"model.name_or_path={tiny_model_dir}",
                f"output_dir={out}", "run_name=tiny", "data.languages=en,de", "data.max_questions=32",
                "batching.global_batch_size=4", "train.max_steps=2", "train.warmup_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_prints_only_its_json_result_and_no_library_noise(trained):
    out, proc = trained
    result = json.loads(proc.stdout)  # `hbt train … > out.json` parses
    assert result["run_name"] == "tiny" and (out / "tiny" / "model" / "hbt_training.json").is_file()
    assert not _noise(proc.stderr), _noise(proc.stderr)
    assert "Traceback" not in proc.stderr and "TrainingReport(" not in proc.stderr
    # -q: the load hint and where the MLflow runs are, nothing else
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) <= 3, lines
    assert any(x.startswith("[hbt] MLflow runs: mlflow ui --backend-store-uri sqlite:///") for x in lines)


def test_eval_of_a_trained_run_scores_the_articles_it_held_out(trained):
    out, _ = trained
    record = json.loads((out / "tiny" / "model" / "hbt_training.json").read_text())
    split = json.loads((out / "tiny" / "split.json").read_text())
    assert sorted(record["data"]["heldout_articles"]) == sorted(split["test"])
    assert sorted(record["data"]["train_articles"]) == sorted(split["train"])
    # No --config: the defaults hold out nothing, so without the model's record every article would be scored.
    proc = _hbt("-q", "eval", "--model", "tiny", "--benchmark", "xquad_r", "--langs", "en,de", "--json",
                f"output_dir={out}", "eval.max_questions=20", "eval.pool=question_paragraphs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # --json: stdout is the JSON document alone
    assert doc["articles"] == sorted(split["test"])
    assert doc["split"] == "test" and doc["trained_by"] == "tiny" and doc["training_articles_scored"] == []
    assert not _noise(proc.stderr), _noise(proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) <= 3, lines

    # The stand-alone evaluation is the training run's child in MLflow, with tags that agree.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hbt")
    (ev,) = client.search_runs([exp.experiment_id], "tags.`hbt.stage` = 'eval'")
    (tr,) = client.search_runs([exp.experiment_id], "tags.`hbt.stage` = 'train'")
    assert ev.data.tags["mlflow.parentRunId"] == tr.info.run_id == ev.data.tags["hbt.evaluates_run"]
    assert ev.data.tags["hbt.seed"] == tr.data.tags["hbt.seed"] == "0"
    assert ev.data.tags["hbt.strategy"] == tr.data.tags["hbt.strategy"] == "hybrid"
    assert ev.data.params["eval_split"] == "test" and ev.info.run_name == "tiny/eval"
    # The trained model is an MLflow logged model of its training run, pointing at its folder.
    models = client.search_logged_models([exp.experiment_id])
    assert [m.source_run_id for m in models] == [tr.info.run_id]
    assert models[0].tags["hbt.location"] == str((out / "tiny" / "model").resolve())

    # Training articles only with the flag, and labelled so in the table.
    proc = _hbt("-q", "eval", "--model", "tiny", "--benchmark", "xquad_r", "--langs", "en,de",
                "--on-training-data", "--no-track", f"output_dir={out}", "eval.max_questions=20",
                "eval.pool=question_paragraphs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"XQuAD-R includes \d+ article\(s\) that tiny trained on", proc.stdout), proc.stdout
    assert proc.stdout.lstrip().startswith("benchmark"), "stdout is the table alone"
