"""``hbt eval`` and ``ray_jobs/evaluate.py``: resolve the model, evaluate, track, summarise."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hbt.config import ConfigError, HBTConfig, with_overrides, write_text_atomic
from hbt.eval.runner import evaluate, evaluate_tracked
from hbt.eval.summary import eval_json, summary_table

log = logging.getLogger("hbt.eval")


def eval_shortcuts(benchmark: str | None, data: str | None, langs: str | None) -> list[str]:
    """``hbt eval``'s ``--benchmark/--data/--langs`` as config overrides (recorded in the run's ``config.yaml``).

    ``--langs`` selects the QA benchmarks' languages (``eval.languages``) when a
    QA benchmark is chosen, else the chosen benchmark's own key
    (``eval.tatoeba_languages`` / ``eval.miracl_languages``). ``--data`` needs one benchmark.

    Raises:
        ValueError: ``--data`` with several benchmarks, or an unknown benchmark name.
    """
    from hbt.eval.registry import spec

    out: list[str] = []
    names = [b.strip() for b in benchmark.split(",") if b.strip()] if benchmark else []
    specs = [spec(n) for n in names]
    if names:
        out.append(f"eval.benchmarks=[{','.join(names)}]")
    if data is not None:
        if len(specs) != 1:
            raise ValueError("--data names the data of one benchmark: give exactly one --benchmark with it")
        out.append(f"eval.{specs[0].path_key}={data}")
    if langs is not None:
        keys = {s.languages_key for s in specs} or {"languages"}
        key = "languages" if "languages" in keys else keys.pop()
        out.append(f"eval.{key}=[{','.join(x.strip() for x in langs.split(',') if x.strip())}]")
    return out


def held_out_split(cfg: HBTConfig, record: dict[str, Any] | None, on_training_data: bool = False
                   ) -> tuple[HBTConfig, dict[str, Any]]:
    """The config that scores a trained model on what it did not train on, and the split's label.

    XQuAD-R is hbt's training data: a model hbt trained records its training articles
    (``hbt_training.json``). By default its evaluation keeps to the articles held out
    from that run, whatever the config's own ``data.heldout_articles`` say (a config
    that names a subset of them narrows it). ``on_training_data`` keeps the config's
    articles, and the label names the training articles scored.

    Returns:
        (the config to evaluate with, ``{"split": ..., "training_articles_scored": [...],
        "trained_by": run name}``; an empty label for a model without a record or no XQuAD-R).

    Raises:
        ConfigError: the model trained on every XQuAD-R article, and the flag is absent.
    """
    data = (record or {}).get("data") or {}
    trained = set(data.get("train_articles") or [])
    if not trained or "xquad_r" not in cfg.eval.benchmarks:
        return cfg, {}
    run = record.get("run_name") or "?"
    held = list(data.get("heldout_articles") or [])
    mine = list(cfg.data.heldout_articles) if cfg.eval.heldout_only else []
    if on_training_data:
        overlap = sorted(set(mine) & trained if mine else trained)  # no list of its own: every article
        label = "test, with training articles" if overlap else "test"
        return cfg, {"split": label, "training_articles_scored": overlap, "trained_by": run}
    if not held:
        raise ConfigError(f"--model: run {run} trained on every XQuAD-R article, so it has no held-out XQuAD-R "
                          "split: evaluate other benchmarks (--benchmark mlqa_r,tatoeba) or pass --on-training-data")
    if mine and set(mine) <= set(held):
        return cfg, {"split": "test", "training_articles_scored": [], "trained_by": run}
    if mine:
        log.warning("data.heldout_articles of the config includes %d article(s) run %s trained on: scoring the "
                    "%d articles it held out instead (--on-training-data keeps the config's)",
                    len(set(mine) - set(held)), run, len(held))
    else:
        log.info("scoring the %d XQuAD-R articles run %s held out from training", len(held), run)
    # The run's dev articles too: the config's own could overlap the run's held-out ones.
    cfg = with_overrides(cfg, {"data.heldout_articles": held, "data.dev_articles": list(data.get("dev_articles") or []),
                               "eval.heldout_only": True})
    return cfg, {"split": "test", "training_articles_scored": [], "trained_by": run}


def run_eval_job(cfg: HBTConfig, model: str, out_dir: str | None = None, track: bool = True,
                 on_training_data: bool = False) -> dict[str, Any]:
    """Evaluates ``model`` (already resolved by :func:`hbt.model.storage.resolve_model_ref`) and saves everything.

    Args:
        cfg: the validated config.
        model: a local model dir, a storage URI or a hub id.
        out_dir: where results go (default ``<output_dir>/eval-<timestamp>``), :func:`~hbt.eval.summary.eval_json`'s
            document included as ``summary.json``.
        track: log one MLflow run (``False``: files only); a model hbt trained gets it nested
            under its training run, when both live in one MLflow store.
        on_training_data: score XQuAD-R articles the model trained on (see :func:`held_out_split`).

    Returns:
        The :func:`~hbt.eval.summary.eval_json` document, plus ``out_dir`` and ``table`` (the summary text).
    """
    if out_dir is None:
        out_dir = str(Path(cfg.output_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    from hbt.model.storage import read_training_record
    from hbt.tracking import redact_uri, tracking_uri

    record = read_training_record(model)
    cfg, label = held_out_split(cfg, record, on_training_data)
    if not track:
        result = evaluate(cfg, model, out_dir, label=label)
    else:
        parent, tags = None, {}
        if record:
            tags = {"hbt.evaluates_run": str(record.get("mlflow_run_id")), "hbt.strategy": str(record.get("strategy")),
                    "hbt.seed": str(record.get("seed")), "hbt.split": label.get("split", "test")}
            if record.get("mlflow_run_id") and record.get("tracking_uri") == redact_uri(tracking_uri(cfg)):
                parent = record["mlflow_run_id"]  # the training run's child in the MLflow UI
        name = f"{record['run_name']}/eval" if record and record.get("run_name") else f"eval-{Path(model.rstrip('/')).name}"
        result = evaluate_tracked(cfg, model, out_dir, cfg.run_name or name, parent_run_id=parent, tags=tags,
                                  label=label)
    benchmarks = list(dict.fromkeys(cfg.eval.benchmarks))
    doc = eval_json(result, model, benchmarks, list(cfg.eval.settings))
    write_text_atomic(Path(out_dir) / "summary.json", json.dumps(doc, indent=2))
    return {**doc, "out_dir": str(Path(out_dir).resolve()),
            "table": summary_table(result, benchmarks, list(cfg.eval.settings))}
