"""The search end to end on a tiny model: trials, MLflow nesting, reports, a failing trial, resume."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from hbt.cli import main as hbt_main
from hbt.config import ConfigError, load_config
from hbt.tune import run_tune


def tiny_search_cfg(model_dir, out, *extra):
    """2-layer 32-d model, en+de, 2 steps of 4 pairs, dev eval on 8 questions of 2 dev articles.

    The MLflow store is named: MLflow exports the first URI a process sets as
    MLFLOW_TRACKING_URI, which a config without tracking.uri would then pick up.
    """
    return load_config(None, [
        f"output_dir={out}", f"tracking.uri=sqlite:///{Path(out).resolve() / 'mlflow.db'}",
        f"model.name_or_path={model_dir}", "data.languages=[en,de]", "data.max_questions=16",
        "data.dev_articles=[Warsaw,Geology]", "batching.global_batch_size=4", "model.max_passage_length=32",
        "model.max_query_length=16", "train.max_steps=2", "train.warmup_steps=0", "train.log_every=1",
        "train.lr=1e-3", "eval.benchmarks=[xquad_r]", "eval.languages=[en,de]", "eval.max_questions=8",
        "eval.batch_size=16", "eval.max_length=32", "tracking.experiment=hbt-tune-tests",
        # fp32 pinned: the end-to-end test compares the loop's in-memory dev score with the saved
        # model's Ray Data evaluation to 1e-4, and `auto` means bf16 autocast in memory but bf16
        # weights in the actors on hardware where bf16 is fast.
        "eval.precision=fp32", *extra,
    ])


def write_space(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def _children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.slow
def test_three_trial_search_end_to_end(tiny_model_dir, tmp_path, ray_local):
    space = write_space(tmp_path / "alpha.yaml", {"fixed": {"batching.strategy": "hybrid"},
                                                   "params": {"batching.alpha": {"grid": [0.0, 0.5, 1.0]}}})
    cfg = tiny_search_cfg(tiny_model_dir, tmp_path / "out", "run_name=s3", "train.dev_eval_every=1")
    out = run_tune(cfg, space_path=str(space))

    search = tmp_path / "out" / "s3"
    assert out["search_dir"] == str(search)
    assert out["num_trials"] == 3 and out["counts"]["TERMINATED"] == 3
    trials = json.loads((search / "trials.json").read_text())
    assert sorted(t["params"]["batching.alpha"] for t in trials) == [0.0, 0.5, 1.0]
    for t in trials:
        for key in ("objective", "dev/monolingual/mAP", "dev/cross_lingual/mAP", "dev/multilingual/mAP",
                    "dev/bias/own_language_top1", "dev/bias/rank_distance_mean", "train/loss"):
            assert key in t["metrics"], key
        assert t["metrics"]["objective"] == t["metrics"]["dev/multilingual/mAP"]
        # Its own dir under the search dir and a unique Train run name.
        assert Path(t["trial_dir"]).parent == search / "trials"
        assert (Path(t["trial_dir"]) / t["run_name"] / "model").is_dir()
    assert len({t["run_name"] for t in trials}) == 3

    # One parent run for the search, one nested (training) run per trial holding the dev metrics.
    uri = out["tracking_uri"]
    assert uri == f"sqlite:///{(tmp_path / 'out' / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["hbt.stage"] == "tune"
    children = _children(uri, out["mlflow_run_id"])
    assert len(children) == 3
    assert {c.data.tags["hbt.trial_id"] for c in children} == {t["trial_id"] for t in trials}
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"objective", "dev/multilingual/mAP", "dev/cross_lingual/mAP", "train/loss"} <= set(c.data.metrics)
        # train.dev_eval_every=1: the dev objective was reported at both training steps, then after training.
        history = client.get_metric_history(c.info.run_id, "objective")
        assert sorted({m.step for m in history}) == [1, 2] and len(history) == 3
        # The loop's in-memory dev score of the final model equals the trial's Ray Data evaluation of it.
        at_end = [m.value for m in history if m.step == 2]
        assert at_end[0] == pytest.approx(at_end[1], abs=1e-4)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/trials.md", "search/pareto.json", "search/best_config.yaml",
            "search/plot_batching.alpha.png"} <= artifacts

    pareto = json.loads((search / "pareto.json").read_text())
    assert pareto["front"] and set(out["pareto"]) <= {t["trial_id"] for t in trials}
    assert "Pareto front" in (search / "pareto.md").read_text()
    assert (search / "plot_batching.alpha.png").stat().st_size > 1000

    best = Path(out["best_config"])
    assert hbt_main(["config", "validate", str(best)]) == 0
    best_cfg = load_config(best)
    best_trial = max((t for t in trials), key=lambda t: t["metrics"]["objective"])
    assert best_cfg.batching.alpha == best_trial["params"]["batching.alpha"]
    assert best_cfg.batching.strategy == "hybrid" and best_cfg.run_name is None

    # A second search under the same name must not silently reuse this one.
    with pytest.raises(ConfigError, match="pass --resume"):
        run_tune(cfg, space_path=str(space))


@pytest.fixture(scope="module")
def faulty_search(tiny_model_dir, tmp_path_factory):
    """Two trials, one of which raises in training (no Train retries): run once, kept for the resume test."""
    from hbt.raysetup import init_ray

    init_ray(None)  # the shared local Ray (ray_local is function-scoped)
    tmp = tmp_path_factory.mktemp("faulty")
    space = write_space(tmp / "space.yaml", {"fixed": {"batching.alpha": 0.5},
                                             "params": {"train.fault_inject_step": {"grid": [None, 1]}}})
    # One Train worker here (the end-to-end test runs the local layout of two): cheaper, same search code.
    cfg = tiny_search_cfg(tiny_model_dir, tmp / "out", "run_name=faulty", "ray.max_failures=0",
                          "ray.num_workers=1", "ray.cpus_per_worker=1")
    return cfg, space, run_tune(cfg, space_path=str(space))


@pytest.mark.slow
def test_a_failing_trial_is_reported_and_the_others_finish(faulty_search):
    _, _, out = faulty_search
    assert out["num_trials"] == 2 and out["counts"] == {"TERMINATED": 1, "STOPPED": 0, "ERROR": 1}
    trials = {t["params"]["train.fault_inject_step"]: t for t in json.loads(
        (Path(out["search_dir"]) / "trials.json").read_text())}
    assert trials[1]["status"] == "ERROR" and "injected fault at step 1" in trials[1]["error"]
    assert trials[None]["status"] == "TERMINATED" and trials[None]["metrics"]["objective"] > 0
    assert out["best"]["trial_id"] == trials[None]["trial_id"]
    table = (Path(out["search_dir"]) / "trials.md").read_text()
    assert "| ERROR |" in table and "injected fault" in table
    # The failed trial's training run is nested too, and marked FAILED.
    uri = out["tracking_uri"]
    assert sorted(c.info.status for c in _children(uri, out["mlflow_run_id"])) == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_resume_reruns_only_the_errored_trial(faulty_search):
    cfg, space, first = faulty_search
    search = Path(first["search_dir"])
    trials = {t["params"]["train.fault_inject_step"]: t for t in json.loads((search / "trials.json").read_text())}
    done, failed = trials[None], trials[1]
    done_record = Path(done["trial_dir"]) / "trial.json"
    stamp = done_record.stat().st_mtime_ns
    assert not (Path(failed["trial_dir"]) / "trial.json").exists()

    out = run_tune(cfg, space_path=str(space), resume=True)

    assert out["search_dir"] == str(search) and out["mlflow_run_id"] == first["mlflow_run_id"]
    assert out["num_trials"] == 2 and out["counts"]["TERMINATED"] == 2
    # The finished trial was kept, not run again; the errored one ran again under
    # its own run name (the fault marker in its run dir keeps it from re-firing).
    assert done_record.stat().st_mtime_ns == stamp
    assert json.loads((Path(failed["trial_dir"]) / "trial.json").read_text())["run_name"] == failed["run_name"]
    uri = out["tracking_uri"]
    runs = _children(uri, first["mlflow_run_id"])
    per_trial = {}
    for r in runs:
        per_trial.setdefault(r.data.tags.get("mlflow.runName"), []).append(r.info.status)
    assert per_trial[done["run_name"]] == ["FINISHED"]
    assert sorted(per_trial[failed["run_name"]]) == ["FAILED", "FINISHED"]


def test_resume_without_a_search_fails_clearly(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.dev_articles=[Warsaw]"])
    with pytest.raises(ConfigError, match="no search to resume"):
        run_tune(cfg, space_path=None, resume=True)


@pytest.mark.skipif(importlib.util.find_spec("hyperopt") is not None, reason="hyperopt is installed")
def test_a_missing_search_package_is_named():
    from hbt.tune.search import check_search_settings

    with pytest.raises(ConfigError, match="needs the 'hyperopt' package, which is not installed"):
        check_search_settings(load_config(None, ["data.dev_articles=[Warsaw]", "tune.search_alg=hyperopt"]))


def test_search_settings_that_cannot_work_fail_before_ray():
    from hbt.tune.search import check_search_settings

    base = ["data.dev_articles=[Warsaw]"]
    with pytest.raises(ConfigError, match="needs intermediate reports: set train.dev_eval_every"):
        check_search_settings(load_config(None, [*base, "tune.scheduler=asha"]))
    for extra in ("train.dev_eval_every=5", "train.checkpoint_every=5"):
        check_search_settings(load_config(None, [*base, "tune.scheduler=asha", extra]))
    with pytest.raises(ConfigError, match="data.dev_articles is empty"):
        check_search_settings(load_config(None))
    assert check_search_settings(load_config(None, base)) == {"dev/multilingual/mAP": 1.0}


def test_search_algorithms_and_scheduler():
    pytest.importorskip("optuna")
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from hbt.tune.search import build_scheduler, build_search_alg

    assert isinstance(build_search_alg(load_config(None, ["tune.search_alg=grid"]), 1), BasicVariantGenerator)
    opt = build_search_alg(load_config(None, ["tune.search_alg=optuna"]), 2)
    assert isinstance(opt, ConcurrencyLimiter) and opt.max_concurrent == 2 and opt.metric == "objective"
    # Train-phase reports (no objective yet) must not reach Optuna's pruning hook: plain
    # OptunaSearch raises on them (there is no such trial, and no objective in the result).
    opt.searcher.on_trial_result("t", {"train/loss": 1.0, "training_iteration": 1})
    with pytest.raises(Exception):
        opt.searcher.on_trial_result("t", {"objective": 0.5, "training_iteration": 1})
    assert build_scheduler(load_config(None)) is None
    asha = build_scheduler(load_config(None, ["tune.scheduler=asha", "train.max_steps=20", "tune.asha_grace_period=5"]))
    assert isinstance(asha, ASHAScheduler) and asha.metric == "train/loss" and asha._time_attr == "step"
    assert asha._mode == "min" and math.isclose(asha._max_t, 20)
    # With dev evaluation during training ASHA cuts trials on the search's own objective.
    asha = build_scheduler(load_config(None, ["tune.scheduler=asha", "train.max_steps=20", "train.dev_eval_every=5",
                                              "data.dev_articles=[Warsaw]", "tune.mode=max"]))
    assert asha.metric == "objective" and asha._mode == "max"


@pytest.mark.slow
def test_an_interrupted_search_says_so_and_resumes(tiny_model_dir, tmp_path):
    """SIGINT after the first trial: exit 130, no best config, the parent run KILLED; --resume completes it."""
    import signal
    import subprocess
    import sys
    import time

    from hbt.config import PROJECT_ROOT

    space = write_space(tmp_path / "alpha.yaml", {"fixed": {"batching.strategy": "hybrid"},
                                                   "params": {"batching.alpha": {"grid": [0.0, 0.5, 1.0]}}})
    out = tmp_path / "out"
    overrides = [f"output_dir={out}", f"tracking.uri=sqlite:///{out.resolve() / 'mlflow.db'}",
                 f"model.name_or_path={tiny_model_dir}", "data.languages=[en,de]", "data.max_questions=16",
                 "data.dev_articles=[Warsaw,Geology]", "batching.global_batch_size=4", "model.max_passage_length=32",
                 "model.max_query_length=16", "train.max_steps=2", "train.warmup_steps=0", "eval.benchmarks=[xquad_r]",
                 "eval.languages=[en,de]", "eval.max_questions=8", "eval.max_length=32", "run_name=cut",
                 "ray.num_workers=1", "ray.cpus_per_worker=1"]
    log = open(tmp_path / "tune.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hbt.cli", "tune", "--space", str(space), *overrides],
                            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not list((out / "cut" / "trials").glob("*/eval-dev/metrics.json")):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "tune.log").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(3)  # the trial's final report reaches Tune
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, (tmp_path / "tune.log").read_text()[-3000:]
    printed = (tmp_path / "tune.log").read_text()
    last = printed.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and " of 3 trials finished" in last and "hbt tune --resume" in last, last
    assert not (out / "cut" / "best_config.yaml").exists() and not (out / "cut" / "summary.json").exists()
    state = json.loads((out / "cut" / "search.json").read_text())
    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    assert client.get_run(state["mlflow_run_id"]).info.status == "KILLED"

    command = last.split("resume with: ", 1)[1].split()  # exactly what the line says
    assert command[:3] == ["hbt", "tune", "--resume"]
    resumed = subprocess.run([sys.executable, "-m", "hbt.cli", *command[1:]], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "cut" / "summary.json").read_text())
    assert summary["counts"]["TERMINATED"] == 3 and (out / "cut" / "best_config.yaml").is_file()
    assert client.get_run(state["mlflow_run_id"]).info.status == "FINISHED"
