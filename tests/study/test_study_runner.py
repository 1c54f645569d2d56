"""The study end to end on a tiny model: every strategy trains, evaluates, and the report says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from hbt.config import PROJECT_ROOT, load_config
from hbt.study.runner import headline_metrics, reductions, strategy_overrides


def test_strategies_map_to_alpha_one_zero_and_configured():
    cfg = load_config(None, ["batching.alpha=0.3"])
    assert strategy_overrides(cfg, "x_x_mono")["batching.alpha"] == 1.0
    assert strategy_overrides(cfg, "x_y")["batching.alpha"] == 0.0
    assert strategy_overrides(cfg, "hbt") == {"batching.strategy": "hybrid", "batching.alpha": 0.3}


def test_local_study_lists_its_reductions_and_metrics():
    cfg = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    red = " ".join(reductions(cfg))
    assert "7 training languages" in red and "frozen" in red and "150 questions" in red
    keys = headline_metrics(cfg)
    assert "xquad_r/multilingual/mAP" in keys and "mlqa_r/cross_lingual/mAP" in keys and "tatoeba/xx-eng/acc@1" in keys
    assert "3 training seed(s)" in red
    assert cfg.domain_shift_endpoints() == ["mlqa_r/monolingual/mAP", "mlqa_r/cross_lingual/mAP",
                                            "mlqa_r/multilingual/mAP", "tatoeba/xx-eng/acc@1", "tatoeba/eng-xx/acc@1"]
    assert cfg.primary_endpoint() == "xquad_r/multilingual/mAP"


@pytest.mark.slow
def test_study_runs_every_strategy_and_writes_the_report(tiny_model_dir, tmp_path):
    """``hbt study`` through the CLI, its output redirected to a file as a user's ``> study.log`` would."""
    from mlflow.tracking import MlflowClient

    overrides = [
        f"output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", "run_name=study-test",
        "data.languages=[en,de,es]", "eval.languages=[en,de,es]", "data.max_questions=32",
        "batching.global_batch_size=4", "train.max_steps=2", "train.warmup_steps=0", "train.log_every=1",
        "eval.max_questions=20", "eval.tatoeba_languages=[deu,spa]", "eval.benchmarks=[xquad_r,tatoeba]",
        "study.bootstrap_samples=200", "model.freeze_embeddings=false", "study.seeds=[0,1]", "study.strategies=[x_y,hbt]",
        "study.domain_shift_endpoints=[tatoeba/xx-eng/acc@1,tatoeba/eng-xx/acc@1]",
    ]
    log_file = tmp_path / "study.log"
    with open(log_file, "wb") as f:
        rc = subprocess.run([sys.executable, "-m", "hbt.cli", "study", "--config", "configs/local.yaml", *overrides],
                            stdout=f, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, timeout=1200).returncode
    printed = log_file.read_bytes().decode("utf-8", errors="replace")
    assert rc == 0, printed[-3000:]
    out = tmp_path / "study-test"
    report = json.loads((out / "report.json").read_text())
    for name in ("report.md", "report.json", "timings.json"):
        assert (out / name).exists(), name
    assert list(out.glob("*.png")), "plots"
    saved = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for strategy in ("x_y", "hbt"):
        for seed in (0, 1):
            assert (out / "eval" / f"{strategy}-s{seed}" / "metrics.json").exists()
    assert "xquad_r" in md and "tatoeba" in md and saved == json.loads(json.dumps(report))
    # 2 endpoints x 1 baseline, Holm over the 2; zero-shot is a family of its own; the answer comes from the first
    assert saved["endpoints"]["holm_family"] == 2 and saved["endpoints"]["holm_fine_tuning"] == 2
    assert saved["endpoints"]["primary"]["key"] == "xquad_r/multilingual/mAP"
    # The power plan closes the report, projected from the estimates and the measured pace.
    assert "## Plan" in md and saved["plan"]["designs"] and all(r["hours"] > 0 for r in saved["plan"]["designs"])
    assert json.loads((out / "machine.json").read_text())["cores"] >= 1
    assert saved["answer"].split(":")[0] in ("No", "Yes", "Not settled at margin 0.01")
    assert saved["rows"][0]["scores"]["hbt"]["n_seeds"] == 2
    assert any("questions per article" in r for r in saved["reductions"])
    assert any("truncated at eval.max_length" in r for r in saved["reductions"])
    assert "study finished" in printed and saved["answer"] in printed
    # The log a user keeps: no progress-bar redraws, no line echoed twice.
    lines = printed.splitlines()
    assert "\r" not in printed and not [x for x in lines if re.search(r"\d+%\|", x)]
    echoed = [a for a, b in zip(lines, lines[1:]) if a == b and a.strip()]
    assert not echoed, echoed
    steps = [x for x in lines if re.search(r"\[hbt\] .*step \d+/2 loss", x)]
    assert len(steps) == 4 * 2, steps  # 2 steps x 4 runs, each line once (not echoed)

    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hbt")
    parent = client.search_runs([exp.experiment_id], "attributes.run_name = 'study-test'")[0]
    # The tree a user browses: study -> zero-shot eval, and study -> strategy -> seed -> {train, eval}.
    def below(run) -> dict[str, object]:
        kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        return {k.info.run_name: k for k in kids}

    assert parent.data.tags["hbt.stage"] == "study" and parent.info.status == "FINISHED"
    top = below(parent)
    assert set(top) == {"zero_shot/eval", "x_y", "hbt"}
    assert top["zero_shot/eval"].data.tags["hbt.stage"] == "eval"
    for strategy in ("x_y", "hbt"):
        group = top[strategy]
        assert group.data.tags["hbt.stage"] == "strategy" and group.data.tags["hbt.strategy"] == strategy
        seeds = below(group)
        assert set(seeds) == {f"{strategy}/s0", f"{strategy}/s1"}
        for seed in (0, 1):
            seed_run = seeds[f"{strategy}/s{seed}"]
            leaves = below(seed_run)
            assert set(leaves) == {f"{strategy}/s{seed}/train", f"{strategy}/s{seed}/eval"}
            for run in [seed_run, *leaves.values()]:
                # The study's strategy name on every level (the X-Y training run is not "hybrid" here).
                assert run.data.tags["hbt.strategy"] == strategy and run.data.tags["hbt.seed"] == str(seed)
                assert run.info.status == "FINISHED"
            assert leaves[f"{strategy}/s{seed}/train"].data.tags["hbt.stage"] == "train"
            assert leaves[f"{strategy}/s{seed}/eval"].data.tags["hbt.stage"] == "eval"
        assert group.info.status == "FINISHED"
    assert any(a.path == "report.md" for a in client.list_artifacts(parent.info.run_id))

    # The report again from the saved evaluations under other statistics: no training, no Ray.
    again = subprocess.run([sys.executable, "-m", "hbt.cli", "study", "--report-from", str(out),
                            "study.bootstrap_samples=300"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = json.loads((out / "report.json").read_text())
    assert rebuilt["bootstrap"]["n_samples"] == 300 and saved["bootstrap"]["n_samples"] == 200
    assert [r["scores"] for r in rebuilt["rows"]] == [r["scores"] for r in saved["rows"]]
    assert rebuilt["answer"] in again.stdout and "Started a local Ray" not in again.stdout + again.stderr

    # The planner at other designs, and publishing into docs with a README section, both without Ray.
    plan = subprocess.run([sys.executable, "-m", "hbt.cli", "study", "--plan", str(out), "seeds=2,6",
                           "questions=current,all"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.count("\n| current | ") == 2 and plan.stdout.count("\n| all | ") == 2
    from hbt.study.readme import BEGIN, END

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nold\n{END}\n\nrest\n", encoding="utf-8")
    pub = subprocess.run([sys.executable, "-m", "hbt.cli", "study", "--report-from", str(out), "--publish",
                          str(tmp_path / "docs"), "--readme", str(readme)], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, timeout=600)
    assert pub.returncode == 0, pub.stderr[-3000:]
    assert (tmp_path / "docs" / "report.json").is_file() and list((tmp_path / "docs").glob("*.png"))
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("\n\nrest\n") and rebuilt["answer"] in text


def test_plan_of_a_directory_that_is_no_study_or_with_a_bad_option_fails_in_one_line(tmp_path, capsys):
    from hbt.cli import main

    assert main(["study", "--plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished study directory" in err[0]
    for bad, key in (("seeds=0", "seeds"), ("questions=few", "questions"), ("alpha=1", "--plan takes")):
        assert main(["study", "--plan", str(tmp_path), bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], err
    (tmp_path / "report.json").write_text("{trunc", encoding="utf-8")
    assert main(["study", "--plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.json" in err[0]


def test_report_from_a_directory_that_is_no_study_fails_in_one_line(tmp_path, capsys):
    from hbt.cli import main

    (tmp_path / "config.yaml").write_text("run_name: x\n", encoding="utf-8")
    assert main(["study", "--report-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished study directory" in err[0] and str(tmp_path) in err[0]
    assert main(["study", "--report-from", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
