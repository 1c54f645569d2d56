"""``hbt eval`` by benchmark: shortcuts become overrides, and the JSON and the printed table agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from hbt.config import PROJECT_ROOT
from hbt.eval.job import eval_shortcuts


def test_shortcuts_become_config_overrides():
    assert eval_shortcuts("xquad_r", None, "en,de") == ["eval.benchmarks=[xquad_r]", "eval.languages=[en,de]"]
    assert eval_shortcuts("tatoeba", "/d/tat", "deu,fra") == [
        "eval.benchmarks=[tatoeba]", "eval.tatoeba_path=/d/tat", "eval.tatoeba_languages=[deu,fra]"]
    # QA and Tatoeba together: --langs selects the QA languages
    assert eval_shortcuts("xquad_r,tatoeba", None, "de")[-1] == "eval.languages=[de]"
    with pytest.raises(ValueError, match="exactly one --benchmark"):
        eval_shortcuts("xquad_r,mlqa_r", "/x", None)
    from hbt.eval.benchmarks import BenchmarkError

    with pytest.raises(BenchmarkError, match="unknown benchmark 'squad'"):
        eval_shortcuts("squad", None, None)


def _table_row(stdout: str, title: str, setting: str) -> dict[str, str]:
    lines = stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("benchmark") and "setting" in ln)
    cols = header.split()[2:]
    row = next(ln for ln in lines if ln.split()[:2] == [title, setting])
    return dict(zip(cols, row.split()[2:]))


@pytest.mark.slow
def test_hbt_eval_by_benchmark_writes_json_and_table(offline_e5_dir, tmp_path):
    out_json = tmp_path / "res" / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "eval", "--model", str(offline_e5_dir), "--benchmark", "xquad_r",
         "--langs", "en,de", "--out", str(tmp_path / "res"),
         f"output_dir={tmp_path}", "eval.max_questions=20", "eval.pool=question_paragraphs"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "xquad_r" and doc["model"] == str(offline_e5_dir)
    for setting in ("multilingual", "monolingual", "crosslingual"):
        assert 0.0 < doc["settings"][setting]["mAP"] <= 1.0
    assert doc["matrix"]["languages"] == ["en", "de"] and len(doc["matrix"]["values"]) == 2
    # X = Y on the diagonal is the monolingual pair
    assert doc["matrix"]["values"][1][1] == pytest.approx(doc["metrics"]["xquad_r/monolingual/de/mAP"])
    assert {"own_language_top1", "rank_distance_mean", "mAP_spread"} <= set(doc["language_bias"])
    assert doc["metrics"]["xquad_r/multilingual/mAP"] == doc["settings"]["multilingual"]["mAP"]
    # the printed table shows the JSON's numbers
    for setting in ("multilingual", "monolingual", "crosslingual"):
        row = _table_row(proc.stdout, "XQuAD-R", setting)
        for col in ("mAP", "R@1", "R@10", "nDCG@10"):
            assert float(row[col]) == pytest.approx(doc["settings"][setting][col], abs=5e-4), (setting, col)
    assert float(_table_row(proc.stdout, "XQuAD-R", "multilingual")["own-lang"]) == pytest.approx(
        doc["language_bias"]["own_language_top1"], abs=5e-4)
    # the shortcuts are recorded in the run's config like any override
    saved = yaml.safe_load((tmp_path / "res" / "config.yaml").read_text())
    assert saved["eval"]["benchmarks"] == ["xquad_r"] and saved["eval"]["languages"] == ["en", "de"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("model, message", [
    ("no-such-run", "no-such-run: not a model directory"),
    ("s3://hbt-no-such-bucket/m", "cannot reach the storage"),
])
def test_a_model_that_names_nothing_fails_before_ray(tmp_path, model, message):
    proc = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "eval", "--model", model, "--benchmark", "tatoeba", f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
        env={**__import__("os").environ, "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_miracl_qrels_naming_a_missing_document_through_the_cli(tmp_path):
    import shutil

    root = tmp_path / "miracl"
    shutil.copytree(PROJECT_ROOT / "tests" / "assets" / "eval" / "miracl", root)
    qrels = root / "miracl-v1.0-de" / "qrels" / "qrels.miracl-v1.0-de-dev.tsv"
    qrels.write_text(qrels.read_text() + "20\tQ0\tgone#3\t1\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the benchmark fails first
    proc = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "eval", "--model", str(model), "--benchmark", "miracl", "--data", str(root),
         "--langs", "de", f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "qrels.miracl-v1.0-de-dev.tsv" in lines[0] and "line 5" in lines[0] and "gone#3" in lines[0]


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_reaches_no_file_and_no_output(tiny_model_dir, tmp_path):
    """A real (tiny) ``hbt eval`` with ``tracking.uri=http://user:secret@…`` (a dead server): neither a file it
    writes under output_dir or --out, nor its stdout/stderr, holds the password."""
    import os

    runs, res = tmp_path / "runs", tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "hbt.cli", "eval", "--model", str(tiny_model_dir), "--benchmark", "tatoeba",
         "--langs", "deu", "--out", str(res), "--json", f"output_dir={runs}",
         "tracking.uri=http://user:secret@127.0.0.1:9", "eval.max_questions=20", "eval.num_encoders=1",
         "eval.precision=fp32", "eval.batch_size=32"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "secret" not in proc.stdout + proc.stderr
    assert "user:***@127.0.0.1:9" in proc.stderr  # the tracking warning names the server, without the password
    written = [p for root in (runs, res) if root.exists() for p in root.rglob("*") if p.is_file()]
    assert {"mlflow_run.json", "config.yaml", "params.json", "metrics.json", "summary.json"} <= {p.name for p in written}
    leaks = [str(p) for p in written if b"secret" in p.read_bytes()]
    assert not leaks, leaks
    assert json.loads((res / "mlflow_run.json").read_text())["tracking_uri"] == "http://user:***@127.0.0.1:9"


def test_a_trained_models_record_picks_its_held_out_articles():
    """hbt_training.json's split decides what XQuAD-R scores, whatever the config holds out."""
    from hbt.config import ConfigError, load_config
    from hbt.eval.job import held_out_split

    record = {"run_name": "r", "data": {"train_articles": ["A", "B", "C"], "heldout_articles": ["D", "E"],
                                        "dev_articles": ["F"]}}
    defaults = load_config(None, ["eval.benchmarks=[xquad_r]"])
    cfg, label = held_out_split(defaults, record)
    assert cfg.data.heldout_articles == ["D", "E"] and cfg.eval.heldout_only and label["split"] == "test"
    # A config naming training articles is overridden; one naming a subset of the held-out ones narrows it.
    cfg, _ = held_out_split(load_config(None, ["eval.benchmarks=[xquad_r]", "data.heldout_articles=[A,D]",
                                               "data.dev_articles=[E]"]), record)
    assert cfg.data.heldout_articles == ["D", "E"] and cfg.data.dev_articles == ["F"]
    cfg, _ = held_out_split(load_config(None, ["eval.benchmarks=[xquad_r]", "data.heldout_articles=[E]"]), record)
    assert cfg.data.heldout_articles == ["E"]
    # The flag keeps the config, and the label names the training articles it scores.
    cfg, label = held_out_split(defaults, record, on_training_data=True)
    assert cfg is defaults and label["training_articles_scored"] == ["A", "B", "C"]
    assert label["split"] == "test, with training articles"
    # No XQuAD-R evaluated, or no record: nothing to decide.
    assert held_out_split(load_config(None, ["eval.benchmarks=[tatoeba]"]), record)[1] == {}
    assert held_out_split(defaults, None) == (defaults, {})
    with pytest.raises(ConfigError, match="trained on every XQuAD-R article"):
        held_out_split(defaults, {"run_name": "all", "data": {"train_articles": ["A"], "heldout_articles": []}})
