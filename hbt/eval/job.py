"""``hbt eval`` and ``ray_jobs/evaluate.py``: resolve the model, evaluate, track, summarise."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hbt.config import HBTConfig, write_text_atomic
from hbt.eval.runner import evaluate, evaluate_tracked
from hbt.eval.summary import eval_json, summary_table


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


def run_eval_job(cfg: HBTConfig, model: str, out_dir: str | None = None, output_json: str | None = None,
                 track: bool = True) -> dict[str, Any]:
    """Evaluates ``model`` (already resolved by :func:`hbt.model.storage.resolve_model_ref`) and saves everything.

    Args:
        cfg: the validated config.
        model: a local model dir, a storage URI or a hub id.
        out_dir: where results go (default ``<output_dir>/eval-<timestamp>``).
        output_json: also write :func:`~hbt.eval.summary.eval_json`'s document here.
        track: log one MLflow run (``False``: files only).

    Returns:
        The :func:`~hbt.eval.summary.eval_json` document, plus ``out_dir`` and ``table`` (the summary text).
    """
    if out_dir is None:
        out_dir = str(Path(cfg.output_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    run_name = cfg.run_name or f"eval-{Path(model.rstrip('/')).name}"
    result = evaluate_tracked(cfg, model, out_dir, run_name) if track else evaluate(cfg, model, out_dir)
    benchmarks = list(dict.fromkeys(cfg.eval.benchmarks))
    doc = eval_json(result, model, benchmarks, list(cfg.eval.settings))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_json, json.dumps(doc, indent=2))
    return {**doc, "out_dir": str(Path(out_dir).resolve()),
            "table": summary_table(result, benchmarks, list(cfg.eval.settings))}
