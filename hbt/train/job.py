"""The training job: build the data pipeline and a Ray Train ``TorchTrainer``, fit, record."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import (ConfigError, HBTConfig, HbtError, Interrupted, check_cluster_handoffs, dump_config, on_cluster,
                        redact_uri, resolve_path, write_text_atomic)
from hbt.model.metadata import read_metadata
from hbt.model.offline import resolve_model_path
from hbt.raysetup import init_ray, log_level
from hbt.tracking import end_status, tracker_for, tracking_uri

log = logging.getLogger("hbt.train")


def load_hint(model_dir: str | Path) -> str:
    """The line that tells a user how to load a trained model (a storage URI is fetched first)."""
    if "://" in str(model_dir):
        return (f'load it with: SentenceTransformer(local_model_dir("{model_dir}"))  '
                "# from hbt.model.storage import local_model_dir")
    return f'load it with: SentenceTransformer("{Path(model_dir).resolve()}")'


def default_run_name(cfg: HBTConfig) -> str:
    """A run name that tells the strategy and alpha, unique per start."""
    b = cfg.batching
    tag = f"{b.strategy}-a{b.alpha:g}" if b.strategy == "hybrid" else b.strategy
    return f"{tag}-s{b.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def prefixes(cfg: HBTConfig, model_dir: str) -> tuple[str, str]:
    """Query and passage prefixes: the config's, else the model's metadata (a storage URI's too)."""
    from hbt.model.storage import is_uri, local_model_dir

    if is_uri(model_dir):
        model_dir = local_model_dir(model_dir, weights=False)
    meta = read_metadata(model_dir) if Path(model_dir).is_dir() else None
    q = cfg.model.query_prefix if cfg.model.query_prefix is not None else (meta.query_prefix if meta else "")
    p = cfg.model.passage_prefix if cfg.model.passage_prefix is not None else (meta.passage_prefix if meta else "")
    return q, p


def check_resumable(cfg: HBTConfig, run_name: str) -> None:
    """Refuses to resume a run that does not exist (Ray Train would silently start it from scratch).

    A run exists once :func:`run_training` has written ``output_dir/<run_name>/config.yaml``.

    Raises:
        ConfigError: no such run; the message lists the runs under ``output_dir``.
    """
    root = Path(cfg.output_dir)
    if (root / run_name / "config.yaml").is_file():
        from hbt.train.checkpoints import check_latest_state, latest_complete

        check_latest_state(run_storage(cfg, run_name))
        done = latest_complete(run_storage(cfg, run_name))
        if done is not None and done > cfg.train.max_steps:
            raise ConfigError(f"train.max_steps ({cfg.train.max_steps}) is below the step of run {run_name!r}'s "
                              f"latest checkpoint ({done}): --resume trains on from there, so set it above {done}")
        return
    runs = sorted(p.parent.name for p in root.glob("*/config.yaml"))
    raise ConfigError(f"--resume {run_name!r}: no run of that name under output_dir {root.resolve()} "
                      f"(runs there: {', '.join(runs) or 'none'})")


# Tokenised training tables of this process's Ray session: _table_key -> (block refs, their SkipLog).
_TABLES: dict[tuple[str, ...], tuple[list[Any], Any]] = {}


def _table_key(cfg: HBTConfig, model_dir: str, q_prefix: str, p_prefix: str) -> tuple[str, ...]:
    """What the tokenised table depends on: the Ray session (its refs die with it), the data
    config, the tokenizer, the prefixes and the two lengths."""
    import ray

    ctx = ray.get_runtime_context()
    return (ctx.get_node_id(), ctx.get_job_id(), json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True),
            str(resolve_path(cfg.data.path)),
            str(Path(model_dir).resolve()), q_prefix, p_prefix,
            str(cfg.model.max_query_length), str(cfg.model.max_passage_length))


def start_run_log(cfg: HBTConfig, run_dir: Path, mlflow_run_id: str | None):
    """The run's :class:`hbt.tracking.RunLog` actor, pinned to this (the driver's) node.

    Rank 0 may run on any node; its metrics must land in ``run_dir`` here, and
    the actor must outlive a lost worker node. It reserves no CPU: it writes a
    line per logging window.
    """
    import ray

    from hbt.raysetup import pinned_here
    from hbt.tracking import RunLog

    return ray.remote(RunLog).options(num_cpus=0, scheduling_strategy=pinned_here()).remote(
        tracking_uri(cfg), cfg.tracking.experiment, str(run_dir.resolve()), mlflow_run_id)


def _pinned_here(refs: list[Any]) -> list[Any]:
    """The table's blocks stored again from the driver, so a lost worker node does not take them along.

    Read and tokenise tasks leave their blocks in the object store of the node
    they ran on; a block whose node is gone must be rebuilt by lineage before a
    restarted worker group can train. Blocks put by the driver live on the
    driver's node (the head), which outlives the workers.
    """
    import ray

    return [ray.put(ray.get(r)) for r in refs]


def build_trainer(cfg: HBTConfig, run_name: str, run_dir: Path, run_log: Any, model_dir: str,
                  callbacks: list | None = None):
    """The ``TorchTrainer`` for one training run (datasets attached, not yet fitted).

    ``model_dir`` is the driver's local copy of the base model; the workers and
    tokenise tasks get :func:`hbt.model.storage.shareable_model` of it.
    """
    import ray
    import ray.train
    from ray.data import DataContext
    from ray.train.torch import TorchConfig, TorchTrainer

    from hbt.data.pipeline import (build_train_dataset, make_skip_ledger, materialize_train_table, reads_in_driver,
                                   tokenised_rows_local)
    from hbt.train.loop import train_loop_per_worker

    from hbt.model.storage import shareable_model

    ledger = make_skip_ledger()
    q_prefix, p_prefix = prefixes(cfg, model_dir)
    worker_model = shareable_model(model_dir, cfg)
    key = _table_key(cfg, model_dir, q_prefix, p_prefix)
    if key in _TABLES:
        # A study or a resumed process trains again on the same rows: the blocks are
        # still in this Ray session's object store, and the skips they cost are replayed.
        table, skips = _TABLES[key]
        ray.get(ledger.add.remote(skips))
        log.info("training data: the tokenised table of an earlier run in this session (%d blocks)", len(table))
    else:
        t0 = time.perf_counter()
        if reads_in_driver(cfg):
            # A few thousand rows: read and tokenised here, in a second, where Ray Data's start-up
            # would take ten. The block is put from the driver, so it lives on the head.
            block, skips = tokenised_rows_local(cfg, worker_model, q_prefix, p_prefix, "train")
            table = [ray.put(block)]
            ray.get(ledger.add.remote(skips))
            how = "in the driver"
        else:
            # data.max_questions keeps the first N rows of the stream: fix the order so it is the same N every time.
            DataContext.get_current().execution_options.preserve_order = True
            # Read and tokenise once, with Ray Data tasks; the blocks stay in the object
            # store for every epoch, restart and worker (hbt.data.pipeline).
            table = materialize_train_table(build_train_dataset(cfg, worker_model, q_prefix, p_prefix, "train", ledger))
            if on_cluster(cfg):
                table = _pinned_here(table)
            how = "by Ray Data tasks"
        log.info("training data read and tokenised %s in %.1fs (%d blocks)", how, time.perf_counter() - t0, len(table))
        while len(_TABLES) >= 2:  # the blocks stay pinned while cached: keep the last two tables
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = (table, ray.get(ledger.get.remote()))
    storage = storage_root(cfg)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "model_dir": worker_model,
            "run_dir": str(run_dir.resolve()),
            "run_storage": run_storage(cfg, run_name),
            "run_log": run_log,
            "ledger": ledger,
            "train_table": table,
            "log_level": log_level(),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            # -q: Ray Train's INFO lines (worker group, reports) go with hbt's own.
            logging_config=ray.train.LoggingConfig(log_level=logging.getLevelName(max(log_level(), logging.INFO))),
        ),
    )


def storage_root(cfg: HBTConfig) -> str:
    """Where Ray Train keeps checkpoints: ``ray.storage_path`` (a directory or a pyarrow URI), else ``output_dir/ray_results``."""
    return cfg.ray.storage_path or str((Path(cfg.output_dir) / "ray_results").resolve())


def run_storage(cfg: HBTConfig, run_name: str) -> str:
    """The run's folder in the storage (a URI with its query, or an absolute path)."""
    from hbt.model.storage import is_uri, join_uri

    root = storage_root(cfg)
    return join_uri(root, run_name) if is_uri(root) else str(Path(root, run_name).resolve())


def checkpoint_ref(cfg: HBTConfig, checkpoint) -> str | None:
    """A checkpoint as a reference any node can open: the full URI (scheme, bucket, endpoint) or a path.

    Ray's ``Checkpoint.path`` drops the scheme and the query of the storage URI
    (``bucket/runs/x/checkpoint_…``), which names nothing on its own.
    """
    from hbt.model.storage import is_uri, join_uri

    if checkpoint is None:
        return None
    root = storage_root(cfg)
    if not is_uri(root):
        return checkpoint.path
    from pyarrow import fs

    _, base = fs.FileSystem.from_uri(root)
    rel = checkpoint.path[len(base.rstrip("/")):].strip("/") if checkpoint.path.startswith(base.rstrip("/")) else None
    if rel is None:
        head, _, query = root.partition("?")
        return f"{head.split('://', 1)[0]}://{checkpoint.path}" + (f"?{query}" if query else "")
    return join_uri(root, *rel.split("/"))


def publish_final_model(cfg: HBTConfig, run_name: str, run_dir: Path, checkpoint) -> str:
    """Puts the final checkpoint's model where every later job can reach it, and returns that reference.

    With a storage URI (``s3://…`` on clusters) the model goes to
    ``<storage>/<run_name>/model``: the driver's disk is on one node only, and
    the evaluation's encoder actors fetch the URI on their own nodes. With
    local storage it is copied to ``run_dir/model``.
    """
    from hbt.model.storage import is_uri, join_uri, publish_model

    storage = storage_root(cfg)
    if is_uri(storage):
        uri = join_uri(storage, run_name, "model")
        if checkpoint is not None:
            publish_model(checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/model", uri)
        return uri
    final_model = run_dir / "model"
    if checkpoint is not None:
        # Copied beside, then renamed: a crash mid-copy never leaves a model missing files.
        partial = run_dir / ".model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with checkpoint.as_directory() as d:
            # Hard links where the checkpoint is on the same disk: a checkpoint's files are never
            # rewritten, and the model's 0.5 GB need not be copied (a copy where links fail).
            shutil.copytree(Path(d) / "model", partial, copy_function=_link_or_copy)
        if final_model.exists():
            shutil.rmtree(final_model)
        partial.rename(final_model)
    return str(final_model.resolve())


def run_tags(cfg: HBTConfig) -> dict[str, str]:
    """A training run's MLflow tags: the same keys as its evaluations' (``hbt.stage``, ``hbt.strategy``, ``hbt.seed``)."""
    b = cfg.batching
    tags = {"hbt.stage": "train", "hbt.strategy": b.strategy, "hbt.seed": str(b.seed)}
    if b.strategy == "hybrid":
        tags["hbt.alpha"] = f"{b.alpha:g}"
    return tags


def training_record(cfg: HBTConfig, run_name: str, tracker, split, tags: dict[str, str]) -> dict[str, Any]:
    """What ``hbt_training.json`` says of the run: its MLflow run and the articles it trained on.

    ``hbt eval --model`` reads it to score the held-out split by default and to link
    its MLflow run to this one.
    """
    d = cfg.data
    return {
        "run_name": run_name, "mlflow_run_id": tracker.run_id,
        "tracking_uri": redact_uri(tracker.uri) if tracker.uri else None,
        "strategy": tags.get("hbt.strategy", cfg.batching.strategy), "seed": cfg.batching.seed,
        "steps": cfg.train.max_steps, "base_model": cfg.model.name_or_path,
        "data": {"format": d.format, "path": d.path, "languages": list(d.languages),
                 "heldout_articles": list(split.test) if split else list(d.heldout_articles),
                 "dev_articles": list(split.dev) if split else list(d.dev_articles),
                 "train_articles": list(split.train) if split else None},
    }


def _record_model(tracker, run_name: str, final_model: str, record: dict[str, Any]) -> None:
    """The final model as an MLflow logged model of the run, its small descriptive files as artifacts."""
    from hbt.model.storage import is_uri

    files = [] if is_uri(final_model) else [
        p for p in sorted(Path(final_model).iterdir())
        if p.is_file() and p.suffix in (".json", ".md") and p.stat().st_size < 2**20]
    params = {"strategy": record["strategy"], "seed": record["seed"], "steps": record["steps"],
              "base_model": record["base_model"], "languages": ",".join(record["data"]["languages"])}
    tracker.record_model(run_name, final_model, files, params)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def training_pace(run_dir: Path) -> dict[str, float]:
    """A run's median pairs/s and data-wait share of step time over its logged windows after the first.

    The first window holds the warm-up (first batches, allocator growth), so it is
    left out, as in ``docs/benchmarks.md``. Read from the run's ``metrics.jsonl``,
    which rank 0's metrics reach on the driver's node (:func:`start_run_log`).
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash before a resume: its window is not a measurement
        if isinstance(row, dict) and "train/data_wait_frac" in row:
            rows.append(row)
    later = rows[1:] or rows
    if not later:
        return {}
    return {"pairs_per_s": float(np.median([r["train/samples_per_s"] for r in later])),
            "data_wait_frac": float(np.median([r["train/data_wait_frac"] for r in later])),
            "windows": float(len(later))}


def _user_error(err: BaseException) -> HbtError | None:
    """The hbt error (bad input, a damaged file) a worker raised, out of Ray Train's wrapping, if any."""
    failures = list(getattr(err, "worker_failures", {}).values())
    failures += [getattr(err, "controller_failure", None)]
    for f in failures:
        f = getattr(f, "cause", None) or f  # a RayTaskError holds the worker's own exception as its cause
        if isinstance(f, HbtError):
            return f
    return None


def run_training(cfg: HBTConfig, resume_from: str | None = None, parent_run_id: str | None = None,
                 callbacks: list | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Trains a bi-encoder with Ray Train + DeepSpeed and records the run.

    Args:
        cfg: the validated config.
        resume_from: the run name of an earlier run to continue (Ray Train
            restores its latest checkpoint; raise ``train.max_steps`` to train longer).
        parent_run_id: MLflow parent run (studies and tuning nest runs).
        callbacks: extra Ray Train ``UserCallback`` s (Tune's report callback).
        tags: MLflow tags over :func:`run_tags` (a study names its strategy, e.g. ``x_y``).

    Returns:
        ``run_name``, ``run_dir``, ``model_dir`` (the final transformers
        model), ``checkpoint`` and the final ``metrics``.

    Raises:
        ConfigError: ``resume_from`` names no run under ``output_dir`` (checked before Ray starts).
    """
    import ray

    if not ray.is_initialized():  # a Tune trial runs inside Ray: its search checked the config
        check_cluster_handoffs(cfg)
    from hbt.model.storage import check_model_files, check_storage, is_uri, write_training_record

    if is_uri(storage_root(cfg)):
        check_storage(storage_root(cfg))  # before Ray: a wrong bucket fails now, not at the first checkpoint
    if resume_from is not None:
        check_resumable(cfg, resume_from)
    model_dir = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    if Path(model_dir).is_dir():
        check_model_files(model_dir, "fix or replace model.name_or_path")  # damaged weights fail before Ray
    run_name = resume_from or cfg.run_name or default_run_name(cfg)
    run_dir = Path(cfg.output_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    init_ray(cfg.ray.address)

    tags = {**run_tags(cfg), **(tags or {})}
    tracker = tracker_for(cfg, run_name, run_dir, parent_run_id, tags=tags)
    tracker.log_params(cfg.model_dump(mode="json"))
    tracker.log_artifact(run_dir / "config.yaml")
    split = None
    if cfg.data.format == "xquad":
        from hbt.data.readers import xquad_split

        split = xquad_split(resolve_path(cfg.data.path), cfg.data.languages, cfg.data.heldout_articles, cfg.data.dev_articles)
        write_text_atomic(run_dir / "split.json", json.dumps(split.__dict__, indent=2))
        tracker.log_params({"split.train_questions": split.questions["train"], "split.dev_questions": split.questions["dev"],
                            "split.test_questions": split.questions["test"]} | {"data.path_resolved": resolve_path(cfg.data.path)})
        tracker.log_artifact(run_dir / "split.json")
        log.info("XQuAD split: %s questions (train/dev/test articles %d/%d/%d)", split.questions,
                 len(split.train), len(split.dev), len(split.test))

    def stopped() -> Interrupted:
        return Interrupted(f"interrupted: training run {run_name} stopped; its checkpoints are kept in "
                           f"{redact_uri(run_storage(cfg, run_name))}; resume with: hbt train --resume {run_name} "
                           f"output_dir={cfg.output_dir} (and the same config)")

    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    run_log = None
    try:
        run_log = start_run_log(cfg, run_dir, tracker.run_id)
        trainer = build_trainer(cfg, run_name, run_dir, run_log, model_dir, callbacks)
        result = trainer.fit()
    except SystemExit:
        # Ray Train's Ctrl-C handler aborts its controller and then exits the process from
        # inside fit: the run is interrupted, not finished, and the CLI must say so.
        tracker.end("KILLED")
        if main:
            raise stopped() from None
        raise
    except BaseException as e:  # Ctrl-C too: the run must not stay RUNNING in MLflow
        tracker.end(end_status(e))
        cause = _user_error(e)
        if cause is not None:
            raise cause from None  # one line from the CLI, not Ray Train's wrapped traceback
        raise
    finally:
        if run_log is not None:
            ray.kill(run_log)  # rank 0 waited for every line it sent: nothing is pending
        if main:
            # Ray Train's fit installs a Ctrl-C handler that aborts its run, and leaves it
            # installed: a later Ctrl-C would abort nothing and be lost.
            signal.signal(signal.SIGINT, sigint)
    if main and (result.metrics or {}).get("step") != cfg.train.max_steps:
        # Ray Train's handler stopped the run on Ctrl-C and fit returned what it had (a Tune
        # trial runs fit off the main thread, where Ray installs no handler).
        tracker.end("KILLED")
        raise stopped()
    final_model = publish_final_model(cfg, run_name, run_dir, result.checkpoint)
    record = training_record(cfg, run_name, tracker, split, tags)
    write_training_record(final_model, record)
    checkpoint = checkpoint_ref(cfg, result.checkpoint)
    tracker.set_tags({"hbt.final_model": final_model, "hbt.checkpoint": checkpoint or ""})
    _record_model(tracker, run_name, final_model, record)
    metrics = dict(result.metrics or {})
    tracker.end("FINISHED")
    out = {
        "run_name": run_name,
        "run_dir": str(run_dir.resolve()),
        "model_dir": final_model,
        "checkpoint": checkpoint,
        "mlflow_run_id": tracker.run_id,
        "metrics": metrics,
        "pace": training_pace(run_dir),
    }
    write_text_atomic(run_dir / "result.json", json.dumps(out, indent=2, default=str))
    log.info("%s: trained model in %s; %s", run_name, out["model_dir"], load_hint(final_model))
    return out
