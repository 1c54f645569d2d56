"""The MLflow tracker: where runs and artifacts land, and that an unreachable server loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hbt.tracking import Tracker


def test_sqlite_artifacts_live_next_to_the_database_whatever_the_cwd(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a Ray worker runs in its own session dir
    art = tmp_path / "report.md"
    art.write_text("hello", encoding="utf-8")

    t = Tracker(uri, "exp/with spaces", "r1", tmp_path / "run")
    t.log_metrics({"m": 1.5}, step=3)
    t.log_artifact(art, "reports")
    t.end()

    assert not (elsewhere / "mlruns").exists()
    client = MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert run.data.metrics["m"] == 1.5
    stored = list((store / "mlartifacts").rglob("report.md"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert [a.path for a in client.list_artifacts(t.run_id, "reports")] == ["reports/report.md"]


def test_unreachable_server_keeps_metrics_locally(tmp_path):
    # Port 9 (discard) on loopback: nothing listens there.
    with pytest.warns(UserWarning, match="going on, metrics are kept in"):
        t = Tracker("http://127.0.0.1:9", "exp", "r", tmp_path / "run")
    t.log_metrics({"loss": 0.25}, step=1)
    t.end()
    rows = [json.loads(x) for x in (Path(tmp_path) / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["loss"] == 0.25 and rows[-1]["step"] == 1
