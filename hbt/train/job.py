"""The training job: build the data pipeline and a Ray Train ``TorchTrainer``, fit, record."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from hbt.config import HBTConfig, dump_config, resolve_path
from hbt.model.metadata import read_metadata
from hbt.model.offline import resolve_model_path
from hbt.raysetup import init_ray, log_level
from hbt.tracking import tracker_for, tracking_uri

log = logging.getLogger("hbt.train")


def load_hint(model_dir: str | Path) -> str:
    """The line that tells a user how to load a trained model."""
    return f'load it with: SentenceTransformer("{Path(model_dir).resolve()}")'


def default_run_name(cfg: HBTConfig) -> str:
    """A run name that tells the strategy and alpha, unique per start."""
    b = cfg.batching
    tag = f"{b.strategy}-a{b.alpha:g}" if b.strategy == "hybrid" else b.strategy
    return f"{tag}-s{b.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def prefixes(cfg: HBTConfig, model_dir: str) -> tuple[str, str]:
    """Query and passage prefixes: the config's, else the model's metadata."""
    meta = read_metadata(model_dir) if Path(model_dir).is_dir() else None
    q = cfg.model.query_prefix if cfg.model.query_prefix is not None else (meta.query_prefix if meta else "")
    p = cfg.model.passage_prefix if cfg.model.passage_prefix is not None else (meta.passage_prefix if meta else "")
    return q, p


def build_trainer(cfg: HBTConfig, run_name: str, run_dir: Path, model_dir: str, mlflow_run_id: str | None,
                  callbacks: list | None = None):
    """The ``TorchTrainer`` for one training run (datasets attached, not yet fitted)."""
    import ray.train
    from ray.data import DataContext
    from ray.train.torch import TorchConfig, TorchTrainer

    from hbt.data.pipeline import build_train_dataset, make_skip_ledger, materialize_train_table
    from hbt.train.loop import train_loop_per_worker

    ledger = make_skip_ledger()
    q_prefix, p_prefix = prefixes(cfg, model_dir)
    # data.max_questions keeps the first N rows of the stream: fix the order so it is the same N every time.
    DataContext.get_current().execution_options.preserve_order = True
    t0 = time.perf_counter()
    # Read and tokenise once, with Ray Data tasks; the blocks stay in the object
    # store for every epoch, restart and worker (hbt.data.pipeline).
    table = materialize_train_table(build_train_dataset(cfg, model_dir, q_prefix, p_prefix, "train", ledger))
    log.info("training data read and tokenised in %.1fs (%d blocks)", time.perf_counter() - t0, len(table))
    storage = cfg.ray.storage_path or str((Path(cfg.output_dir) / "ray_results").resolve())
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "model_dir": model_dir,
            "run_dir": str(run_dir.resolve()),
            "mlflow_run_id": mlflow_run_id,
            "mlflow_uri": tracking_uri(cfg),
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


def run_training(cfg: HBTConfig, resume_from: str | None = None, parent_run_id: str | None = None,
                 callbacks: list | None = None) -> dict[str, Any]:
    """Trains a bi-encoder with Ray Train + DeepSpeed and records the run.

    Args:
        cfg: the validated config.
        resume_from: the run name of an earlier run to continue (Ray Train
            restores its latest checkpoint; raise ``train.max_steps`` to train longer).
        parent_run_id: MLflow parent run (studies and tuning nest runs).
        callbacks: extra Ray Train ``UserCallback`` s (Tune's report callback).

    Returns:
        ``run_name``, ``run_dir``, ``model_dir`` (the final transformers
        model), ``checkpoint`` and the final ``metrics``.
    """
    model_dir = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    run_name = resume_from or cfg.run_name or default_run_name(cfg)
    run_dir = Path(cfg.output_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    init_ray(cfg.ray.address)

    tracker = tracker_for(cfg, run_name, run_dir, parent_run_id,
                          tags={"hbt.kind": "train", "hbt.strategy": cfg.batching.strategy,
                                "hbt.alpha": str(cfg.batching.alpha)})
    tracker.log_params(cfg.model_dump(mode="json"))
    tracker.log_artifact(run_dir / "config.yaml")
    if cfg.data.format == "xquad":
        from hbt.data.readers import xquad_split

        split = xquad_split(resolve_path(cfg.data.path), cfg.data.languages, cfg.data.heldout_articles, cfg.data.dev_articles)
        (run_dir / "split.json").write_text(json.dumps(split.__dict__, indent=2), encoding="utf-8")
        tracker.log_params({"split.train_questions": split.questions["train"], "split.dev_questions": split.questions["dev"],
                            "split.test_questions": split.questions["test"]} | {"data.path_resolved": resolve_path(cfg.data.path)})
        tracker.log_artifact(run_dir / "split.json")
        log.info("XQuAD split: %s questions (train/dev/test articles %d/%d/%d)", split.questions,
                 len(split.train), len(split.dev), len(split.test))

    trainer = build_trainer(cfg, run_name, run_dir, model_dir, tracker.run_id, callbacks)
    try:
        result = trainer.fit()
    except Exception:
        tracker.end("FAILED")
        raise
    final_model = run_dir / "model"
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            if final_model.exists():
                shutil.rmtree(final_model)
            shutil.copytree(Path(d) / "model", final_model)
    tracker.set_tags({"hbt.final_model": str(final_model.resolve()),
                      "hbt.checkpoint": result.checkpoint.path if result.checkpoint else ""})
    metrics = dict(result.metrics or {})
    tracker.end("FINISHED")
    out = {
        "run_name": run_name,
        "run_dir": str(run_dir.resolve()),
        "model_dir": str(final_model.resolve()),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "mlflow_run_id": tracker.run_id,
        "metrics": metrics,
    }
    (run_dir / "result.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    log.info("%s: trained model in %s; %s", run_name, out["model_dir"], load_hint(final_model))
    return out
