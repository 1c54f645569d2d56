"""An interrupted study keeps what it finished and resumes to the report an uninterrupted study gives."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT, load_config
from hbt.study.runner import DONE_FILE, EVAL_SECTIONS, _finished, _mark_finished, config_hash


def _overrides(tmp_path: Path, model: Path, out: str) -> list[str]:
    return [f"output_dir={tmp_path / out}", f"model.name_or_path={model}", "run_name=st",
            "data.languages=[en,de]", "eval.languages=[en,de]", "data.max_questions=16",
            "batching.global_batch_size=4", "train.max_steps=2", "train.warmup_steps=0", "train.log_every=1",
            "model.max_passage_length=32", "model.max_query_length=16", "model.freeze_embeddings=false",
            "eval.max_questions=8", "eval.max_length=32", "eval.tatoeba_languages=[deu]",
            "eval.benchmarks=[xquad_r,tatoeba]", "study.bootstrap_samples=200", "study.seeds=[0]",
            "study.strategies=[x_y,hbt]", "study.domain_shift_endpoints=[tatoeba/xx-eng/acc@1]"]


def _study(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hbt.cli", "study", *args], cwd=PROJECT_ROOT,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three studies in a row: over the suite's 900 s per test on a loaded machine
def test_sigint_after_the_first_run_then_resume_gives_the_uninterrupted_report(tiny_model_dir, tmp_path):
    whole = _study(["-c", "configs/local.yaml", *_overrides(tmp_path, tiny_model_dir, "whole")], tmp_path / "whole.log")
    assert whole.wait(timeout=1200) == 0, (tmp_path / "whole.log").read_text()[-3000:]

    cut = _study(["-c", "configs/local.yaml", *_overrides(tmp_path, tiny_model_dir, "cut")], tmp_path / "cut.log")
    first = tmp_path / "cut" / "st" / "runs" / "st-x_y-s0"
    deadline = time.time() + 900
    while not (first / DONE_FILE).exists():
        assert cut.poll() is None and time.time() < deadline, (tmp_path / "cut.log").read_text()[-3000:]
        time.sleep(0.2)
    cut.send_signal(signal.SIGINT)
    assert cut.wait(timeout=300) == 130, (tmp_path / "cut.log").read_text()[-3000:]
    last = (tmp_path / "cut.log").read_text().strip().splitlines()[-1]
    study_dir = (tmp_path / "cut" / "st").resolve()
    assert last.startswith("interrupted: 1 of 2 training runs") and last.endswith(f"hbt study --resume {study_dir}")
    kept = _fingerprint(first)
    # Ctrl-C leaves no MLflow run RUNNING: the study and its open strategy/seed/train runs are KILLED.
    runs = _mlflow_runs(tmp_path / "cut" / "mlflow.db")
    assert "RUNNING" not in runs.values() and runs["st"] == "KILLED", runs
    assert runs["x_y/s0/train"] == "FINISHED", runs  # the cut comes as its training run is marked done

    resumed = _study(["--resume", str(study_dir)], tmp_path / "resumed.log")
    assert resumed.wait(timeout=1200) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    printed = (tmp_path / "resumed.log").read_text()
    assert "x_y-s0: reused" in printed and "hbt-s0: trained" in printed
    assert _fingerprint(first) == kept  # the finished run was not trained again

    a = json.loads((tmp_path / "whole" / "st" / "report.json").read_text())
    b = json.loads((study_dir / "report.json").read_text())
    assert _close([r["scores"] for r in a["rows"]], [r["scores"] for r in b["rows"]])
    assert a["answer"] == b["answer"]
    # The resumed study continues the same MLflow tree and finishes it.
    runs = _mlflow_runs(tmp_path / "cut" / "mlflow.db")
    assert runs["st"] == runs["x_y"] == runs["hbt"] == runs["hbt/s0/train"] == runs["hbt/s0/eval"] == "FINISHED", runs


def _mlflow_runs(db: Path) -> dict[str, str]:
    """Run name -> status of the newest run of that name in a sqlite MLflow store (a training run cut
    short and continued has two: the KILLED one and the one that finished it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db.resolve()}")
    exp = client.get_experiment_by_name("hbt")
    out: dict[str, str] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"]):
        out.setdefault(r.info.run_name, r.info.status)
    return out


def _close(a, b, tol: float = 1e-6) -> bool:
    """Nested structures equal, numbers within ``tol``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        assert b == pytest.approx(a, abs=tol)
        return True
    assert a == b
    return True


def test_a_unit_is_reused_only_under_the_config_it_ran_with(tmp_path):
    cfg = load_config(None, [])
    digest = config_hash(cfg)
    assert _finished(tmp_path, digest) is None
    _mark_finished(tmp_path, digest, {"seconds": 3.0})
    assert _finished(tmp_path, digest)["seconds"] == 3.0
    assert _finished(tmp_path, config_hash(load_config(None, ["train.lr=1e-4"]))) is None
    assert config_hash(cfg, EVAL_SECTIONS, "model-a") != config_hash(cfg, EVAL_SECTIONS, "model-b")
    # The study's statistics, tracking and storage change no unit; the evaluation settings change
    # the evaluations only.
    other = load_config(None, ["study.bootstrap_samples=500", "tracking.experiment=x", "ray.storage_path=/tmp/s"])
    assert config_hash(other) == digest and config_hash(other, EVAL_SECTIONS) == config_hash(cfg, EVAL_SECTIONS)
    fewer = load_config(None, ["eval.max_questions=5"])
    assert config_hash(fewer) == digest and config_hash(fewer, EVAL_SECTIONS) != config_hash(cfg, EVAL_SECTIONS)
    (tmp_path / DONE_FILE).write_text('{"config_hash": "')  # cut short: never trusted
    assert _finished(tmp_path, digest) is None
