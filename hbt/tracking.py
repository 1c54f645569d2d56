"""MLflow tracking that never stops a run.

Every metric is also appended to ``metrics.jsonl`` in the run directory, so
nothing is lost when the tracking server is unreachable: a warning is printed
once and the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from hbt.config import _USERINFO, REDACTED, HBTConfig, flatten, redact_uri  # noqa: F401  (redact_uri re-exported)


def _redact_params(flat: dict[str, Any]) -> dict[str, Any]:
    """Params with credentials cut out of every URI-like string value (``tracking.uri`` and any other)."""
    return {k: redact_uri(v) if isinstance(v, str) and "://" in v else v for k, v in flat.items()}


def tracking_uri(cfg: HBTConfig) -> str:
    """The MLflow URI: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store under ``output_dir``.

    The sqlite path is absolute: Ray workers run in session dirs, where a
    relative store would be lost (docs/ray.md).
    """
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cfg.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def browse_hint(cfg: HBTConfig) -> str:
    """The line every command ends with: how to open its MLflow store (the password left out)."""
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return f"MLflow runs: open {redact_uri(uri)} (experiment {cfg.tracking.experiment!r})"
    return f"MLflow runs: mlflow ui --backend-store-uri {redact_uri(uri)}"


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go next to the database, not into ``./mlruns``.

    MLflow's default artifact root for a database store is ``./mlruns``
    relative to the *current* directory, so a driver and its Ray workers (which
    run in session dirs) would scatter one run's artifacts over several places.
    Other stores keep the server's default (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


class Tracker:
    """One MLflow run (optionally nested) plus a local JSONL copy of its metrics.

    Args:
        uri: MLflow tracking URI.
        experiment: experiment name.
        run_name: the run's display name.
        run_dir: local directory for ``metrics.jsonl`` and ``params.json``.
        parent_run_id: makes this a nested run of that parent.
        tags: run tags.
        run_id: attach to this existing run instead of creating one (a
            Train worker logging into the run its driver created).

    With ``uri`` None the tracker keeps the local files only (the run's MLflow
    run could not be created: its metrics must still be kept).
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str,
        run_dir: str | os.PathLike,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.uri = uri
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id: str | None = None
        self._client = None
        self._warned = False
        if uri is None:
            return
        if uri.startswith(("http://", "https://")):
            # MLflow retries a dead server for minutes by default; a training
            # run should notice within seconds and go on without it.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        try:
            from mlflow.tracking import MlflowClient

            # A client bound to this URI, never mlflow.set_tracking_uri: that sets
            # MLFLOW_TRACKING_URI process-wide and would redirect later runs.
            self._client = MlflowClient(uri)
            if run_id is not None:
                self._client.get_run(run_id)
                self.run_id = run_id
                return
            exp = self._client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(
                experiment, artifact_location=default_artifact_location(uri, experiment))
            all_tags = dict(tags or {})
            # A caller's display name (a study's ``x_y/s0/train``) over the run's own name.
            all_tags.setdefault("mlflow.runName", run_name)
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self._client.create_run(exp_id, tags=all_tags,
                                                  run_name=all_tags["mlflow.runName"]).info.run_id
        except Exception as e:  # unreachable server, bad URI: keep training
            self._degrade(e)

    def _degrade(self, err: Exception) -> None:
        if not self._warned:
            warnings.warn(
                f"MLflow tracking at {redact_uri(self.uri or '')} failed "
                f"({type(err).__name__}: {_redact_text(str(err), self.uri or '')}); "
                f"going on, metrics are kept in {self.run_dir / 'metrics.jsonl'}",
                stacklevel=3,
            )
            self._warned = True
        self._client = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs (flattened) params; values are stringified and cut to MLflow's 6000 characters.

        Credentials inside URI values (``tracking.uri`` = ``http://user:pass@host``)
        are replaced by ``***`` before they reach MLflow or ``params.json``.
        """
        flat = _redact_params(flatten(params))
        (self.run_dir / "params.json").write_text(json.dumps(flat, indent=2, default=str), encoding="utf-8")
        if self._client is None:
            return
        from mlflow.entities import Param

        try:
            items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[i : i + 100])
        except Exception as e:
            self._degrade(e)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Logs numeric metrics (non-finite values are kept locally only)."""
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}, default=float) + "\n")
        if self._client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(_mlflow_key(k), float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        try:
            for i in range(0, len(items), 500):
                self._client.log_batch(self.run_id, metrics=items[i : i + 500])
        except Exception as e:
            self._degrade(e)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets run tags."""
        if self._client is None:
            return
        try:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))
        except Exception as e:
            self._degrade(e)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Uploads a file or directory as an artifact."""
        if self._client is None:
            return
        try:
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as e:
            self._degrade(e)

    def record_model(self, name: str, location: str, files: list[Path], params: dict[str, str]) -> str | None:
        """Records a trained model as an MLflow logged model of this run (the experiment's Models tab).

        The weights stay where training put them (``location``: a folder or a storage
        URI, tagged ``hbt.location``): a copy per run in the artifact store would double
        every study's disk. The small files that describe the model (card, configs,
        training record) are the logged model's artifacts.

        Returns:
            The logged model's id (``None`` when tracking is off or failed).
        """
        if self._client is None:
            return None
        try:
            run = self._client.get_run(self.run_id)
            model = self._client.create_logged_model(
                run.info.experiment_id, name=name, source_run_id=self.run_id, model_type="sentence-transformers",
                tags={"hbt.location": location}, params={k: str(v)[:6000] for k, v in params.items()})
            for f in files:
                self._client.log_model_artifact(model.model_id, str(f))
            self._client.finalize_logged_model(model.model_id, "READY")
            return model.model_id
        except Exception as e:
            self._degrade(e)
            return None

    def kill_unfinished_children(self) -> int:
        """Marks KILLED every run below this one still RUNNING (left so by a process that was killed).

        Returns:
            How many were marked.
        """
        if self._client is None:
            return 0
        try:
            run = self._client.get_run(self.run_id)
            todo, killed = [self.run_id], 0
            while todo:
                parent = todo.pop()
                for child in self._client.search_runs([run.info.experiment_id],
                                                      f"tags.mlflow.parentRunId = '{parent}'", max_results=10000):
                    todo.append(child.info.run_id)
                    if child.info.status == "RUNNING":
                        self._client.set_terminated(child.info.run_id, status="KILLED")
                        killed += 1
            return killed
        except Exception as e:
            self._degrade(e)
            return 0

    def reopen(self) -> None:
        """Marks the run RUNNING again (a resumed study continues its parent run)."""
        if self._client is None:
            return
        try:
            self._client.update_run(self.run_id, status="RUNNING")
        except Exception as e:
            self._degrade(e)

    def end(self, status: str = "FINISHED") -> None:
        """Closes the run (``FINISHED`` or ``FAILED``)."""
        if self._client is None:
            return
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as e:
            self._degrade(e)


def _redact_text(text: str, uri: str) -> str:
    """An error message with the URI's credentials cut out (errors often quote the URI)."""
    if redact_uri(uri) != uri:
        text = text.replace(uri, redact_uri(uri))
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def _mlflow_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; '@' (acc@1) is not among them.
    return key.replace("@", "_at_")


def tracker_for(cfg: HBTConfig, run_name: str, run_dir: str | os.PathLike, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None) -> Tracker:
    """A :class:`Tracker` configured from ``cfg.tracking``."""
    return Tracker(tracking_uri(cfg), cfg.tracking.experiment, run_name, run_dir, parent_run_id, tags)


class RunLog:
    """The training run's record on the driver's node: ``metrics.jsonl`` in the run dir, then MLflow.

    Train workers may run on nodes that share no disk with the driver, and may die
    with their node. Rank 0 therefore sends its step metrics, dev scores and tags
    here (a Ray actor that :func:`hbt.train.job.start_run_log` pins to the
    driver's node): the file is on the disk the driver reads, and it is written
    whether or not the tracking server answers.

    Args:
        uri: MLflow tracking URI, or None when the run has no MLflow run.
        experiment: experiment name.
        run_dir: the run's directory on the driver's node.
        run_id: the MLflow run the driver created (None: local files only).
    """

    def __init__(self, uri: str | None, experiment: str, run_dir: str, run_id: str | None) -> None:
        self._tracker = Tracker(uri if run_id else None, experiment, "", run_dir, run_id=run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Appends to ``metrics.jsonl``, then logs to MLflow when it is reachable."""
        self._tracker.log_metrics(metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets MLflow tags of the run."""
        self._tracker.set_tags(tags)


def end_status(err: BaseException) -> str:
    """The MLflow status of a run that ``err`` ended: KILLED for an interruption, else FAILED."""
    return "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
