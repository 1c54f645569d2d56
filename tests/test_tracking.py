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


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:s3cret@mlflow.example.com:5000", "http://alice:***@mlflow.example.com:5000"),
    ("https://alice:s3cret@mlflow.example.com/path", "https://alice:***@mlflow.example.com/path"),
    ("postgresql://u:s3cret@db.internal/mlflow", "postgresql://u:***@db.internal/mlflow"),
    ("mysql+pymysql://u:s3%40cret@db:3306/mlflow?ssl=1", "mysql+pymysql://u:***@db:3306/mlflow?ssl=1"),
    ("https://s3cret@mlflow.example.com", "https://***@mlflow.example.com"),
    ("https://mlflow.example.com/?token=s3cret&x=1", "https://mlflow.example.com/?token=***&x=1"),
    ("http://hbt-head:5000", "http://hbt-head:5000"),
    ("sqlite:////tmp/runs/mlflow.db", "sqlite:////tmp/runs/mlflow.db"),
])
def test_redact_uri(uri, shown):
    from hbt.tracking import redact_uri

    assert redact_uri(uri) == shown


def test_credentials_in_the_tracking_uri_reach_no_param_and_no_warning(tmp_path):
    from hbt.config import config_from_dict

    uri = "http://alice:s3cret@127.0.0.1:9"  # nothing listens: the run degrades and warns
    cfg = config_from_dict({"tracking": {"uri": uri}, "eval": {"miracl_path": "postgresql://u:pw2@h/db"}})
    with pytest.warns(UserWarning) as caught:
        t = Tracker(uri, "exp", "r", tmp_path / "run")
        t.log_params(cfg.model_dump(mode="json"))
    assert caught and not any("s3cret" in str(w.message) for w in caught)
    assert all("alice:***@127.0.0.1:9" in str(w.message) for w in caught)
    stored = (tmp_path / "run" / "params.json").read_text()
    assert "s3cret" not in stored and "pw2" not in stored
    assert json.loads(stored)["tracking.uri"] == "http://alice:***@127.0.0.1:9"


def test_credentials_never_reach_mlflow_params(tmp_path, monkeypatch):
    # A working store, and the credentials only in the configured URI value that is logged as a param.
    from hbt.config import config_from_dict

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config_from_dict({"tracking": {"uri": "postgresql://u:s3cret@db.internal/mlflow"}})
    t = Tracker(store, "exp", "r", tmp_path / "run")
    t.log_params(cfg.model_dump(mode="json"))
    t.end()
    params = MlflowClient(store).get_run(t.run_id).data.params
    assert params["tracking.uri"] == "postgresql://u:***@db.internal/mlflow"
    assert not any("s3cret" in v for v in params.values())
