"""The Ray Tune search: one Ray Train run plus a dev evaluation per trial.

Ray 2.60 runs Train V2 under Tune as a Tune *function* trainable that builds
and fits the ``TorchTrainer`` itself (a trainer can no longer be handed to a
``Tuner``). ``TuneReportCallback`` forwards rank 0's Train reports (one per
checkpoint: ``train/*`` metrics and ``step``) to Tune; after training, the
trial evaluates its final model on the dev split and makes one last report
with ``objective`` and every ``dev/*`` metric. The search dir is
``output_dir/<run_name or 'tune'>``: Tune's experiment state, one dir per
trial under ``trials/``, and the reports (see :mod:`hbt.tune.report`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import yaml

from hbt.config import (ConfigError, HBTConfig, Interrupted, _redacted, config_from_dict, dump_config, flatten,
                        on_cluster, read_json_file, redact_uri, with_overrides, write_text_atomic)
from hbt.objective import OBJECTIVE, dev_metrics, objective_value, validate_objective
from hbt.tune.report import TrialRow, write_reports
from hbt.tune.space import SearchSpace, load_space, parse_space

log = logging.getLogger("hbt.tune")

STATE_FILE = "search.json"
# The trainable only drives the TorchTrainer and the evaluation; the Train
# workers and encoder actors reserve their own resources. It asks for no CPU:
# even 0.01 CPU leaves a 2-CPU machine one CPU short of 2 workers x 0.5 plus a
# 1-CPU Ray Data read task, and ingest waits forever. Tune refuses an empty
# request, so the bundle holds a little memory.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
TRIAL_FILE = "trial.json"
# The final report's key holding the trial's record (JSON); the search writes it to trials/<id>/trial.json.
RECORD_KEY = "hbt_trial_record"


# ---------------------------------------------------------------------------
# The trial
# ---------------------------------------------------------------------------


def trial_run_name(search_dir: str | Path, trial_id: str) -> str:
    """The trial's Ray Train run name: unique per search and trial.

    A restarted trial (``--resume`` of an errored one) gets the same name, so
    Ray Train continues from that trial's last checkpoint (docs/ray.md).
    """
    return f"{Path(search_dir).name}-{trial_id}"


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def run_trial(config: dict[str, Any], *, base: dict[str, Any], search_dir: str, parent_run_id: str | None,
              weights: dict[str, float]) -> None:
    """The Tune function trainable: train with Ray Train, evaluate on dev, report.

    Args:
        config: the sampled values (dotted keys).
        base: the search's config (the space's fixed values applied, absolute
            ``output_dir`` and ``tracking.uri``) as a dict.
        search_dir: the search directory.
        parent_run_id: the search's MLflow run (the trial's training run nests under it).
        weights: the objective weights.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hbt.eval.runner import evaluate
    from hbt.tracking import Tracker
    from hbt.train.job import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    out = Path(search_dir) / "trials" / trial_id
    run_name = trial_run_name(search_dir, trial_id)
    cfg = with_overrides(config_from_dict(base, "search config"),
                         {**config, "output_dir": str(out), "run_name": run_name})

    # TuneReportCallback forwards the Train reports (one per checkpoint) to this trial.
    trained = run_training(cfg, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()])
    # The training run is the trial's nested MLflow run: the dev scores go into it too.
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_name, trained["run_dir"],
                      run_id=trained["mlflow_run_id"])
    tracker.set_tags({"hbt.trial_id": trial_id, "hbt.search": Path(search_dir).name})
    try:
        ev = evaluate(cfg, trained["model_dir"], str(out / "eval-dev"), split="dev")
        final = {**_numeric(trained["metrics"]), **dev_metrics(ev.metrics)}
        final[OBJECTIVE] = objective_value(final, weights)
    except BaseException as e:
        # Training finished but the trial did not: keep MLflow in line with the table.
        tracker.set_tags({"hbt.trial_error": f"{type(e).__name__}: {e}"[:500]})
        tracker.end("FAILED")
        raise
    tracker.log_metrics({k: v for k, v in final.items() if k.startswith("dev/") or k == OBJECTIVE},
                        step=int(final.get("step", 0)))
    tracker.log_artifact(out / "eval-dev" / "metrics.json", "eval-dev")
    record = {"trial_id": trial_id, "run_name": run_name, "params": config, "metrics": final,
              "model_dir": trained["model_dir"], "mlflow_run_id": trained["mlflow_run_id"], "trial_dir": str(out)}
    # The record travels in the final report: the trial may run on a node whose disk the search never sees.
    ray.tune.report({**final, RECORD_KEY: json.dumps(record, default=str)})


def trial_dirname(trial) -> str:
    """Tune's dir for a trial: its id (short, and the same as the trial's ``trials/<id>``)."""
    return trial.trial_id


# ---------------------------------------------------------------------------
# Search algorithm and scheduler
# ---------------------------------------------------------------------------


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"tune.search_alg={what} needs the {module!r} package, which is not installed "
                          f"(pip install {module}); use grid or random, or install it")


def build_search_alg(cfg: HBTConfig, max_concurrent: int):
    """``grid``/``random``: Tune's BasicVariantGenerator; ``optuna``: OptunaSearch in a ConcurrencyLimiter.

    Raises:
        ConfigError: the package for ``optuna`` or ``hyperopt`` is missing.
    """
    alg = cfg.tune.search_alg
    if alg in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=cfg.batching.seed)
    from ray.tune.search import ConcurrencyLimiter

    if alg == "optuna":
        _require("optuna", alg)
        from hbt.tune._optuna import FinalReportOptunaSearch

        searcher = FinalReportOptunaSearch(metric=OBJECTIVE, mode=cfg.tune.mode, seed=cfg.batching.seed)
    else:
        _require("hyperopt", alg)
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(metric=OBJECTIVE, mode=cfg.tune.mode, random_state_seed=cfg.batching.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def build_scheduler(cfg: HBTConfig):
    """``asha``: ASHA over training steps; else FIFO.

    With ``train.dev_eval_every`` the loop reports the dev ``objective`` every
    N steps and ASHA acts on it (in ``tune.mode``): trials are cut on the
    metric the search optimises. Without it the only signal during training
    is ``train/loss`` (min), reported with each checkpoint; losses of
    different ``batching.alpha`` or ``train.temperature`` are not on one
    scale, so that mode suits searches over the learning rate or batch size,
    not over alpha.
    """
    if cfg.tune.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = (OBJECTIVE, cfg.tune.mode) if cfg.train.dev_eval_every else ("train/loss", "min")
    # stop_last_trials=False: a trial that reaches max_t (the last step) must
    # still evaluate and make its final report.
    return ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=cfg.train.max_steps,
                         grace_period=min(cfg.tune.asha_grace_period, cfg.train.max_steps), reduction_factor=2,
                         stop_last_trials=False)


def check_search_settings(cfg: HBTConfig) -> dict[str, float]:
    """Validates the ``tune`` section against the rest of the config.

    Returns:
        The objective weights.

    Raises:
        ConfigError: a bad objective, a missing optional package, or settings
            that cannot work (see the messages).
    """
    weights = validate_objective(cfg)
    if cfg.tune.search_alg == "optuna":
        _require("optuna", "optuna")
    if cfg.tune.search_alg == "hyperopt":
        _require("hyperopt", "hyperopt")
    if not cfg.data.dev_articles:
        raise ConfigError("data.dev_articles is empty: trials are scored on the dev split (XQuAD-R dev articles)")
    def before_the_end(every: int) -> bool:
        return 0 < every < cfg.train.max_steps

    if cfg.tune.scheduler == "asha" and not (before_the_end(cfg.train.checkpoint_every)
                                             or before_the_end(cfg.train.dev_eval_every)):
        raise ConfigError("tune.scheduler=asha needs intermediate reports: set train.dev_eval_every (ASHA on the "
                          "dev objective) or train.checkpoint_every (ASHA on train/loss) below train.max_steps; "
                          "with neither there is one report, at the end")
    return weights


def max_concurrent_trials(cfg: HBTConfig) -> int:
    """``tune.max_concurrent_trials``, capped to what a local Ray can run at once.

    A trial holds ``ray.num_workers`` Train workers and needs a CPU left over
    for Ray Data ingest; without it ingest backpressures forever (docs/ray.md).
    On a cluster (``ray.address`` or ``RAY_ADDRESS`` set, other than
    ``local``) the autoscaler adds nodes, so the setting is used as given.
    """
    import ray

    n = cfg.tune.max_concurrent_trials
    if on_cluster(cfg):
        return n
    res = ray.cluster_resources()
    r = cfg.ray
    per_trial_cpu = max(r.max_workers * r.cpus_per_worker + 1.0, (cfg.eval.num_encoders if cfg.eval.num_encoders != "auto" else 1) * cfg.eval.cpus_per_encoder)
    fit = int(res.get("CPU", 0) // per_trial_cpu)
    if r.use_gpu and r.gpus_per_worker:
        fit = min(fit, int(res.get("GPU", 0) // (r.max_workers * r.gpus_per_worker)))
    fit = max(1, fit)
    if n > fit:
        warnings.warn(f"tune.max_concurrent_trials={n} does not fit this local Ray ({res.get('CPU', 0):g} CPUs, "
                      f"{per_trial_cpu:g} per trial): running {fit} at a time", stacklevel=2)
        return fit
    return n


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


def _load_state(search_dir: Path, cfg: HBTConfig, space_path: str | None) -> tuple[HBTConfig, SearchSpace, dict]:
    """The stored config and space of a search to resume (warning about differences with the given ones)."""
    f = search_dir / STATE_FILE
    if not f.exists():
        raise ConfigError(f"--resume: no search to resume in {search_dir} (no {STATE_FILE})")
    state = read_json_file(f, "search state", "it is written when a search starts; start the search again")
    stored_cfg = config_from_dict(state["config"], str(f))
    stored_space = parse_space(state["space"], stored_cfg, f"{f} (space)")
    given = flatten(cfg.model_dump(mode="json"))
    changed = sorted(k for k, v in flatten(stored_cfg.model_dump(mode="json")).items() if given.get(k) != v)
    if space_path is not None:
        new = load_space(space_path, cfg)
        if new.as_dict() != stored_space.as_dict():
            changed.append(f"space ({space_path})")
    if changed:
        warnings.warn(f"--resume: using the search's stored config and space; the given ones differ in {changed}",
                      stacklevel=3)
    return stored_cfg, stored_space, state


def _error_line(err: BaseException) -> str:
    """The last line of an error's text (the innermost exception), cut to 300 characters."""
    lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _rows(results, search_dir: Path, keys: list[str]) -> list[TrialRow]:
    rows = []
    for res in results:
        trial_id = Path(res.path).name
        rec_f = search_dir / "trials" / trial_id / TRIAL_FILE
        reported = (res.metrics or {}).get(RECORD_KEY)
        if reported:
            rec = json.loads(reported)
            if not rec_f.exists():  # a resumed search keeps the records of trials it did not run again
                rec_f.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(rec_f, json.dumps(rec, indent=2))
        else:
            rec = read_json_file(rec_f, "trial record", "delete it and resume the search") if rec_f.exists() else {}
        params = {k: (res.config or {}).get(k) for k in keys}  # None for a trial that never started
        metrics = rec.get("metrics") or _numeric(res.metrics or {})
        if res.error is not None:
            status, error = "ERROR", _error_line(res.error)
        else:
            status, error = ("TERMINATED" if OBJECTIVE in metrics else "STOPPED"), None
        rows.append(TrialRow(trial_id, status, params, metrics, error, trial_run_name(search_dir, trial_id),
                             str(search_dir / "trials" / trial_id), rec.get("mlflow_run_id")))
    return rows


def _close_orphans(uri: str, parent_run_id: str | None) -> None:
    """Marks nested runs still RUNNING (trials a scheduler stopped mid-training) as KILLED."""
    if not parent_run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_run(parent_run_id).info.experiment_id
        for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                             "and attributes.status = 'RUNNING'"):
            client.set_terminated(run.info.run_id, status="KILLED")
    except Exception as e:  # tracking must never fail the search
        warnings.warn(f"could not close stopped trials' MLflow runs: {e}", stacklevel=2)


def _open_parent_run(cfg: HBTConfig, base: HBTConfig, name: str, search_dir: Path, space: SearchSpace,
                     space_path: str | None, state: dict, uri: str):
    """The search's MLflow run: the stored one on resume, else a new one (and the search's state file)."""
    from hbt.tracking import Tracker, tracker_for

    if state.get("mlflow_run_id"):
        return Tracker(uri, cfg.tracking.experiment, name, search_dir, run_id=state["mlflow_run_id"])
    parent = tracker_for(base, name, search_dir, tags={"hbt.stage": "tune"})
    # The config a resume is given (-c): the search's own, with its folder pinned.
    dump_config(with_overrides(cfg, {"output_dir": str(search_dir.parent), "run_name": name}),
                search_dir / "config.yaml")
    (search_dir / "space.yaml").write_text(
        f"# The space of this search (from {space_path}).\n" + yaml.safe_dump(space.as_dict(), sort_keys=False),
        encoding="utf-8")
    # Written before any trial runs, so that a crashed search can be resumed.
    # Credentials in URIs are kept out of the file (a resume takes them from the given config or the environment).
    write_text_atomic(search_dir / STATE_FILE, json.dumps({
        "name": name, "space_path": str(space_path), "mlflow_run_id": parent.run_id, "tracking_uri": redact_uri(uri),
        "config": _redacted(cfg.model_dump(mode="json")), "space": space.as_dict()}, indent=2))
    parent.log_params({"search": {"space_path": str(space_path), "grid_size": space.grid_size()},
                       "space": {p.key: p.describe() for p in space.params},
                       "fixed": space.fixed, "tune": cfg.tune.model_dump(mode="json")})
    parent.log_artifact(search_dir / "space.yaml")
    return parent


@contextlib.contextmanager
def _stop_signals_noted(interrupted: threading.Event):
    """Ctrl-C and SIGTERM during ``Tuner.fit`` stop the search gracefully, and are noted.

    Tune's own SIGINT handler stops the search, saves its state and returns the
    results as if done; hbt must know it was stopped. Tune's SIGINT handler is
    turned off, and ours notes the signal, then raises SIGUSR1, on which Tune
    stops the same way. Before Tune has its handler, the signal is a plain Ctrl-C.
    """
    def on_stop(signum, frame):
        if interrupted.is_set() or not callable(signal.getsignal(signal.SIGUSR1)):
            interrupted.set()
            raise KeyboardInterrupt  # a second Ctrl-C skips Tune's last save, as its message offers
        interrupted.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before


def _build_tuner(cfg: HBTConfig, trainable, name: str, root: Path, space: SearchSpace):
    from ray import tune

    n = max_concurrent_trials(cfg)
    log.info("search %s: %s over %s, %d trial(s) at a time, in %s", name, cfg.tune.search_alg, space.keys, n,
             root / name)
    return tune.Tuner(
        trainable,
        param_space=space.to_tune(cfg.tune.search_alg),
        tune_config=tune.TuneConfig(num_samples=cfg.tune.num_samples, search_alg=build_search_alg(cfg, n),
                                    scheduler=build_scheduler(cfg), trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=str(root),
                                  # Train retries a failing run (ray.max_failures); a trial
                                  # that still fails is reported, not retried by Tune.
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_tune(cfg: HBTConfig, space_path: str | None, resume: bool = False, resume_errored: bool = True) -> dict:
    """Runs (or resumes) a hyperparameter search.

    Args:
        cfg: the validated config (``tune`` section: objective, search
            algorithm, scheduler, samples, concurrency).
        space_path: the search space YAML (``tune_spaces/``); on resume the
            stored space is used and this one only compared with it.
        resume: continue the search in ``output_dir/<run_name or 'tune'>``:
            finished trials are kept, unfinished ones continue.
        resume_errored: on resume, also re-run trials that errored (their Train
            run continues from its last checkpoint).

    Returns:
        ``search_dir``, ``tracking_uri``, ``mlflow_run_id``, ``num_trials``, ``counts`` (per
        status), ``best`` (trial id, params, objective), ``best_config``,
        ``pareto`` (trial ids) and ``files``.

    Raises:
        ConfigError: a bad space or ``tune`` setting (before Ray starts), a
            search dir that exists without ``resume``, or nothing to resume.
    """
    from ray import tune

    from hbt.raysetup import init_ray
    from hbt.tracking import redact_uri, tracking_uri

    root = Path(cfg.output_dir).resolve()
    name = cfg.run_name or "tune"
    search_dir = root / name
    given_uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")  # (no store created here)
    if resume:
        cfg, space, state = _load_state(search_dir, cfg, space_path)
    else:
        if space_path is None:
            raise ConfigError("a search space is needed (--space tune_spaces/<name>.yaml)")
        if (search_dir / STATE_FILE).exists() or tune.Tuner.can_restore(str(search_dir)):
            raise ConfigError(f"a search already exists in {search_dir}: pass --resume to continue it, "
                              f"or set run_name to start another")
        space, state = load_space(space_path, cfg), {}
    weights = check_search_settings(cfg)
    uri = state.get("tracking_uri") or tracking_uri(cfg)
    if given_uri and redact_uri(given_uri) == uri:
        uri = given_uri  # the stored URI is the given one with its password cut out
    # Trials write under their own output_dir, so the MLflow store is pinned here.
    # Trials run in Ray's worker processes, where no RAY_ADDRESS says "cluster": the driver's
    # answer travels in the config, so trials hand their model and metrics across nodes too.
    address = cfg.ray.address or ("auto" if on_cluster(cfg) else None)
    base = with_overrides(cfg, {**space.fixed, "output_dir": str(root), "tracking.uri": uri, "ray.address": address})

    init_ray(cfg.ray.address)
    if on_cluster(cfg) and not cfg.ray.shared_filesystem:
        # A trial's driver may run on any node: a base model on this node's disk (the offline
        # model, a path) is published to storage first, and the trials load it from there.
        from hbt.model.offline import resolve_model_path
        from hbt.model.storage import shareable_model

        local = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
        base = with_overrides(base, {"model.name_or_path": shareable_model(local, cfg)})
    # The Train-phase reports carry train/* only, the final one the objective:
    # Tune's check that every report holds the searched metric would reject
    # the former (the scheduler and searcher skip reports without their metric).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    search_dir.mkdir(parents=True, exist_ok=True)
    parent = _open_parent_run(cfg, base, name, search_dir, space, space_path, state, uri)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.model_dump(mode="json"), search_dir=str(search_dir),
                             parent_run_id=parent.run_id, weights=weights),
        TRIAL_DRIVER_RESOURCES,
    )
    interrupted = threading.Event()
    try:
        # A search stopped before Tune wrote its state has no trials yet: start it.
        if resume and tune.Tuner.can_restore(str(search_dir)):
            log.info("resuming the search in %s", search_dir)
            tuner = tune.Tuner.restore(str(search_dir), trainable, resume_unfinished=True,
                                       resume_errored=resume_errored)
        else:
            tuner = _build_tuner(cfg, trainable, name, root, space)
        with _stop_signals_noted(interrupted):
            results = tuner.fit()
    except BaseException as e:
        parent.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    _close_orphans(uri, parent.run_id)

    rows = _rows(results, search_dir, space.keys)
    if interrupted.is_set():
        # Tune stopped gracefully and returned what it had: a partial search, not a result.
        # No best config, no tables, the parent run KILLED (not FINISHED).
        parent.end("KILLED")
        planned = cfg.tune.num_samples * (space.grid_size() if cfg.tune.search_alg == "grid" else 1)
        done = sum(r.status == "TERMINATED" for r in rows)
        raise Interrupted(f"interrupted: {done} of {planned} trials finished, kept in {search_dir}; resume with: "
                          f"hbt tune --resume -c {search_dir / 'config.yaml'}")
    summary = write_reports(search_dir, rows, cfg, space.fixed, space.keys)
    parent.log_metrics({"search/trials": len(rows), **{f"search/{k.lower()}": v for k, v in summary["counts"].items()}})
    best = summary["best"]
    if best is not None:
        best_row = next(r for r in rows if r.trial_id == best["trial_id"])
        parent.log_metrics({f"best/{k}": v for k, v in best_row.metrics.items()
                            if k == OBJECTIVE or k.startswith("dev/") and k.count("/") == 2})
        parent.set_tags({"hbt.best_trial": best["trial_id"], "hbt.best_config": summary["files"]["best_config.yaml"]})
    for path in summary["files"].values():
        parent.log_artifact(path, "search")
    parent.end("FINISHED")
    out = {"search_dir": str(search_dir), "tracking_uri": redact_uri(uri), "mlflow_run_id": parent.run_id,
           "num_trials": len(rows),
           "counts": summary["counts"], "best": best, "best_config": summary["files"].get("best_config.yaml"),
           "pareto": summary["pareto"], "files": summary["files"]}
    (search_dir / "summary.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    log.info("search done: %s; tables and best_config.yaml in %s", summary["counts"], search_dir)
    return out
